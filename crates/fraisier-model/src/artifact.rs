//! What an artifact is (seed 003's types) and how its bytes are packed.

use serde::{Deserialize, Serialize};

/// Seed 003's artifact types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Api,
    Model,
    Client,
    Server,
}

/// How an artifact's bytes are packed, told from their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ArtifactFormat {
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "zip")]
    Zip,
    /// One file, unpacked as itself.
    #[serde(rename = "file")]
    File,
}

impl ArtifactKind {
    /// The type of the artifact a fraise's releases are stored as.
    pub fn of_fraise(kind: crate::FraiseType) -> ArtifactKind {
        match kind {
            crate::FraiseType::Api => ArtifactKind::Api,
            crate::FraiseType::Etl | crate::FraiseType::Scheduled => ArtifactKind::Server,
        }
    }

    pub const ALL: [ArtifactKind; 4] = [
        ArtifactKind::Api,
        ArtifactKind::Model,
        ArtifactKind::Client,
        ArtifactKind::Server,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Api => "api",
            ArtifactKind::Model => "model",
            ArtifactKind::Client => "client",
            ArtifactKind::Server => "server",
        }
    }

    pub fn parse(s: &str) -> Option<ArtifactKind> {
        ArtifactKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn description(self) -> &'static str {
        match self {
            ArtifactKind::Api => "A service answering requests (the fraises of type api)",
            ArtifactKind::Model => "Model weights or data files served by another artifact",
            ArtifactKind::Client => "A client package or front-end bundle",
            ArtifactKind::Server => "A server binary or job (etl and scheduled fraises)",
        }
    }
}

impl ArtifactFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactFormat::TarGz => "tar.gz",
            ArtifactFormat::Zip => "zip",
            ArtifactFormat::File => "file",
        }
    }

    /// By magic number: gzip (`1f 8b`) is taken for a tarball, `PK\3\4` for a zip archive,
    /// anything else is one file.
    pub fn sniff(head: &[u8]) -> ArtifactFormat {
        if head.starts_with(&[0x1f, 0x8b]) {
            ArtifactFormat::TarGz
        } else if head.starts_with(b"PK\x03\x04") {
            ArtifactFormat::Zip
        } else {
            ArtifactFormat::File
        }
    }
}

/// Names the registry keeps for its own routes (`/artifacts/types`, `/artifacts/storage`).
pub const RESERVED_ARTIFACT_NAMES: &[&str] = &["types", "storage", "signing-key"];

/// What the server signs for a version of an artifact: its workspace, name, version and
/// digest, so that a signature cannot be moved to other bytes, another name or another
/// workspace's artifact of the same name.
pub fn signed_statement(workspace: &str, name: &str, version: &str, digest: &str) -> String {
    format!(
        "fraisier-artifact-signature-v1\nworkspace={workspace}\nname={name}\nversion={version}\ndigest={digest}\n"
    )
}

/// Why a name cannot name an artifact: the rules of fraise names, and not a route's word.
pub fn artifact_name_problem(name: &str) -> Option<String> {
    if RESERVED_ARTIFACT_NAMES.contains(&name) {
        return Some(format!("'{name}' is a word of the artifact routes"));
    }
    crate::names::name_problem(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(
            ArtifactFormat::sniff(&[0x1f, 0x8b, 8]),
            ArtifactFormat::TarGz
        );
        assert_eq!(
            ArtifactFormat::sniff(b"PK\x03\x04rest"),
            ArtifactFormat::Zip
        );
        assert_eq!(ArtifactFormat::sniff(b"#!/bin/sh"), ArtifactFormat::File);
        assert_eq!(ArtifactKind::parse("model"), Some(ArtifactKind::Model));
        assert_eq!(ArtifactKind::parse("docker"), None);
        assert!(artifact_name_problem("types").is_some());
        assert!(artifact_name_problem("my_api").is_none());
    }
}
