//! `fraisier artifact`: push a file to the server's artifact registry, list artifacts and
//! their versions, download one, delete what nothing runs.

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
}

pub async fn run(ctx: &Ctx, cmd: ArtifactCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
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
