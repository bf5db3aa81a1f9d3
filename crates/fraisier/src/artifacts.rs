//! `fraisier artifact`: push a file to the server's artifact registry, list artifacts and
//! their versions, change an artifact's description and tags, promote a version into an
//! environment, download one, delete what nothing runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

#[derive(Subcommand)]
pub enum ArtifactCommand {
    /// Upload a file (a .tar.gz, a .zip, or one file) as a version of an artifact
    Push {
        file: PathBuf,
        /// The artifact (a fraise's artifact carries its name)
        #[arg(long)]
        name: String,
        #[arg(long = "release-version")]
        release_version: String,
        /// api, model, client or server
        #[arg(long = "type", default_value = "api")]
        kind: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Change an artifact's description or tags (what is not given stays)
    Update {
        name: String,
        #[arg(long, conflicts_with = "no_description")]
        description: Option<String>,
        /// Remove the description
        #[arg(long)]
        no_description: bool,
        /// Replace the tags (repeat for several)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Remove every tag
        #[arg(long, conflicts_with = "tags")]
        no_tags: bool,
    },
    /// Deploy a version of a fraise's artifact into an environment, as it is in the registry;
    /// with --from, what runs there (and only that)
    Promote {
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long = "release-version")]
        release_version: Option<String>,
        #[arg(long)]
        strategy: Option<String>,
    },
    /// The artifacts of your workspace
    List {
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// The versions of an artifact, newest first
    Versions { name: String },
    /// Download a version (default: the newest)
    Download {
        name: String,
        #[arg(long = "release-version")]
        release_version: Option<String>,
        /// Where to write it (default: the name the server gives)
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Delete a version, or with no version the whole artifact (refused while it runs)
    Delete {
        name: String,
        #[arg(long = "release-version")]
        release_version: Option<String>,
    },
    /// Sign a version (default: the newest) with the server's key; prints the signature
    Sign {
        name: String,
        #[arg(long = "release-version")]
        release_version: Option<String>,
    },
    /// Print a version's signature (JSON: what `verify` reads)
    Signature {
        name: String,
        #[arg(long = "release-version")]
        release_version: Option<String>,
    },
    /// Print the server's public signing key (what `verify --key` takes)
    SigningKey,
    /// Check offline that FILE is what SIG (from `signature`) signed, with the server's key
    Verify {
        file: PathBuf,
        sig: PathBuf,
        /// The server's public key, base64 (`fraisier artifact signing-key`)
        #[arg(long)]
        key: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: ArtifactCommand) -> Result<ExitCode> {
    if let ArtifactCommand::Verify { file, sig, key } = &cmd {
        return verify(file, sig, key);
    }
    let c = client(ctx).await?;
    match cmd {
        ArtifactCommand::Verify { .. } => unreachable!("handled above"),
        ArtifactCommand::Sign {
            name,
            release_version,
        } => {
            let mut path = format!("/artifacts/{name}/sign");
            if let Some(v) = release_version {
                path.push_str(&format!("?version={v}"));
            }
            let (_, v) = c.post(&path, &serde_json::json!({})).await?;
            print_json(&v);
        }
        ArtifactCommand::Signature {
            name,
            release_version,
        } => {
            let q: Vec<(&str, String)> = release_version
                .map(|v| ("version", v))
                .into_iter()
                .collect();
            let v = c.get(&format!("/artifacts/{name}/signature"), &q).await?;
            print_json(&v);
        }
        ArtifactCommand::SigningKey => {
            let v = c.get("/artifacts/signing-key", &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!("{}", s(&v["public_key"]));
            }
        }
        ArtifactCommand::Push {
            file,
            name,
            release_version: version,
            kind,
            description,
        } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut query = vec![("name", name), ("version", version), ("type", kind)];
            if let Some(d) = description {
                query.push(("description", d));
            }
            let (_, v) = c
                .post_body("/artifacts", &query, f.into(), "application/octet-stream")
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!(
                    "{} {} {} ({} bytes, {}){}",
                    s(&v["artifact"]),
                    s(&v["version"]),
                    s(&v["digest"]),
                    s(&v["size"]),
                    s(&v["format"]),
                    if v["created"] == false {
                        " — already there"
                    } else {
                        ""
                    }
                );
            }
        }
        ArtifactCommand::Update {
            name,
            description,
            no_description,
            tags,
            no_tags,
        } => {
            let mut body = serde_json::Map::new();
            if no_description {
                body.insert("description".into(), serde_json::Value::Null);
            } else if let Some(d) = description {
                body.insert("description".into(), d.into());
            }
            if no_tags || !tags.is_empty() {
                body.insert("tags".into(), tags.into());
            }
            if body.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --description, --no-description, --tag or --no-tags"
                );
            }
            let (_, v) = c.put(&format!("/artifacts/{name}"), &body).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let tags: Vec<String> = v["tags"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(s)
                    .collect();
                println!(
                    "{}: {} [{}]",
                    s(&v["name"]),
                    s(&v["description"]),
                    tags.join(", ")
                );
            }
        }
        ArtifactCommand::Promote {
            name,
            to,
            from,
            release_version,
            strategy,
        } => {
            let body = serde_json::json!({
                "to": to, "from": from, "version": release_version, "strategy": strategy,
            });
            let (_, v) = c.post(&format!("/artifacts/{name}/promote"), &body).await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!(
                    "{} {} → {}: {}",
                    s(&v["fraise"]),
                    s(&v["version"]),
                    s(&v["environment"]),
                    s(&v["id"])
                );
            }
        }
        ArtifactCommand::List { kind } => {
            let mut query = Vec::new();
            if let Some(k) = kind {
                query.push(("type", k));
            }
            let v = c.get("/artifacts", &query).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["artifacts"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|a| {
                        vec![
                            s(&a["name"]),
                            s(&a["type"]),
                            s(&a["latest_version"]),
                            s(&a["versions"]),
                            s(&a["size"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["NAME", "TYPE", "LATEST", "VERSIONS", "BYTES"], &rows)
                );
            }
        }
        ArtifactCommand::Versions { name } => {
            let v = c.get(&format!("/artifacts/{name}/versions"), &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["versions"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|x| {
                        vec![
                            s(&x["version"]),
                            s(&x["digest"]),
                            s(&x["size"]),
                            s(&x["created_at"]),
                            s(&x["created_by"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["VERSION", "DIGEST", "BYTES", "CREATED", "BY"], &rows)
                );
            }
        }
        ArtifactCommand::Download {
            name,
            release_version: version,
            output,
        } => {
            let query: Vec<(&str, String)> = version.map(|v| ("version", v)).into_iter().collect();
            let resp = c
                .get_raw(&format!("/artifacts/{name}/download"), &query)
                .await?;
            if !resp.status().is_success() {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                anyhow::bail!("the server answered {status}: {text}");
            }
            let file_name = resp
                .headers()
                .get("content-disposition")
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.split("filename=\"").nth(1))
                .and_then(|h| h.split('"').next())
                .map(str::to_string)
                .unwrap_or_else(|| name.clone());
            let path = output.unwrap_or_else(|| PathBuf::from(file_name));
            let mut out = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut body = resp.bytes_stream();
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the download broke off")?;
                n += chunk.len() as u64;
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            eprintln!("{} ({n} bytes)", path.display());
        }
        ArtifactCommand::Delete {
            name,
            release_version: version,
        } => {
            let path = match &version {
                Some(v) => format!("/artifacts/{name}/versions/{v}"),
                None => format!("/artifacts/{name}"),
            };
            c.delete(&path).await?;
            eprintln!(
                "deleted {name}{}",
                version.map(|v| format!(" {v}")).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks, with no server, that `file` has the digest `sig` names and that the statement of
/// name, version and digest was signed by `key`. Exit 1 when it was not.
fn verify(file: &std::path::Path, sig: &std::path::Path, key: &str) -> Result<ExitCode> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text =
        std::fs::read_to_string(sig).with_context(|| format!("cannot read {}", sig.display()))?;
    let s: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a signature (JSON from `fraisier artifact signature`)",
            sig.display()
        )
    })?;
    let field = |k: &str| -> Result<String> {
        s[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("{} has no {k}", sig.display()))
    };
    let (workspace, name, version, digest) = (
        field("workspace")?,
        field("artifact")?,
        field("version")?,
        field("digest")?,
    );
    let signature = b64
        .decode(field("signature")?)
        .context("the signature is not base64")?;
    let public = b64.decode(key.trim()).context("--key is not base64")?;
    let mut hasher = sha2::Sha256::new();
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    std::io::copy(&mut f, &mut hasher)?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        println!(
            "FAILED: {} is {actual}, the signature is for {digest}",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let statement =
        fraisier_model::artifact::signed_statement(&workspace, &name, &version, &digest);
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public);
    match key.verify(statement.as_bytes(), &signature) {
        Ok(()) => {
            println!(
                "OK: {} is {name} {version} of workspace {workspace} ({digest}), signed by that key",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            println!("FAILED: the signature of {name} {version} was not made by that key");
            Ok(ExitCode::FAILURE)
        }
    }
}
