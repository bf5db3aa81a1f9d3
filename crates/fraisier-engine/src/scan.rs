//! Scanning an artifact version with the scanner command configured for the server
//! (`server.artifact_scanner`): it gets the version's file and prints its findings as JSON,
//! which are kept with the version. No scanner configured, no scan: nothing is made up.

use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use crate::{Engine, EngineError};

/// A scan takes at most this long.
const SCAN_TIMEOUT: Duration = Duration::from_secs(600);

// === impl Engine ===

impl Engine {
    /// Runs the scanner on a version (default: the newest) and records its findings in the
    /// version's metadata under `scan`; returns that record.
    pub async fn scan_artifact(
        &self,
        tenant: &str,
        name: &str,
        version: Option<&str>,
        by: &str,
    ) -> Result<Value, EngineError> {
        let Some(scanner) = self.config().server.artifact_scanner.clone() else {
            return Err(EngineError::ScannerNotConfigured);
        };
        let v = self.artifact_version(tenant, name, version).await?;
        let path = self
            .blobs()
            .path(&v.digest)
            .filter(|p| p.exists())
            .ok_or_else(|| EngineError::Blob(format!("the bytes of {} are missing", v.digest)))?;
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&scanner)
            .env("FRAISIER_ARTIFACT_FILE", &path)
            .env("FRAISIER_ARTIFACT_NAME", name)
            .env("FRAISIER_ARTIFACT_VERSION", &v.version)
            .env("FRAISIER_ARTIFACT_DIGEST", &v.digest)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(SCAN_TIMEOUT, run)
            .await
            .map_err(|_| EngineError::ScanFailed("the scanner timed out after 600 s".into()))?
            .map_err(|e| EngineError::ScanFailed(format!("cannot run the scanner: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Scanners exit non-zero when they find something; what counts is what they print.
        let findings: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
            EngineError::ScanFailed(format!(
                "the scanner (exit {}) did not print JSON: {e}; stderr: {}",
                out.status.code().map_or("signal".into(), |c| c.to_string()),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ))
        })?;
        let vulnerabilities = match &findings {
            Value::Array(a) => a.clone(),
            Value::Object(o) => o
                .get("vulnerabilities")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| {
                    EngineError::ScanFailed(
                        "the scanner printed an object without a vulnerabilities array".into(),
                    )
                })?,
            _ => {
                return Err(EngineError::ScanFailed(
                    "the scanner printed neither an array nor an object".into(),
                ))
            }
        };
        let mut by_severity = serde_json::Map::new();
        for f in &vulnerabilities {
            let s = f["severity"]
                .as_str()
                .unwrap_or("unknown")
                .to_ascii_lowercase();
            let n = by_severity.get(&s).and_then(Value::as_u64).unwrap_or(0) + 1;
            by_severity.insert(s, json!(n));
        }
        let record = json!({
            "artifact": name,
            "version": v.version,
            "digest": v.digest,
            "scanned_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "scanned_by": by,
            "exit_code": out.status.code(),
            "total": vulnerabilities.len(),
            "by_severity": by_severity,
            "vulnerabilities": vulnerabilities,
        });
        let mut metadata = if v.metadata.is_object() {
            v.metadata.clone()
        } else {
            json!({})
        };
        metadata["scan"] = record.clone();
        self.store()
            .set_version_metadata(tenant, name, &v.version, &metadata)
            .await?;
        Ok(record)
    }
}
