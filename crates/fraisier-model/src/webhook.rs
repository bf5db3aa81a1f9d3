//! Git hosts' webhook deliveries, read: which host sent one (from its headers), what it says
//! (a push of branches or tags, a ping, something else), and which repository it is about.
//! Pure: signatures are checked by the server, deploys started by the engine.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A git host whose webhooks Fraisier understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GitHost {
    Github,
    Gitlab,
    /// Gitea, Forgejo and Gogs, which send the same payloads.
    Gitea,
    /// Bitbucket Cloud and Bitbucket Server / Data Center.
    Bitbucket,
}

/// What a delivery announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    Push(Push),
    /// The host checks the hook works (`ping`, `diagnostics:ping`).
    Ping,
    /// An event Fraisier does not act on (issues, pull requests, …).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub repository: Repository,
    /// Bitbucket may report several refs in one delivery; the others one.
    pub changes: Vec<RefChange>,
}

/// How a payload names its repository.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repository {
    /// `owner/name` (`group/subgroup/name` on GitLab, `PROJECT/slug` on Bitbucket Server).
    pub full_name: Option<String>,
    /// Every URL the payload gives for it (clone, ssh, web).
    pub urls: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefKind {
    Branch,
    Tag,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefChange {
    pub kind: RefKind,
    /// The branch or tag, without `refs/heads/` or `refs/tags/`.
    pub name: String,
    /// The commit the ref now names; `None` when it was deleted.
    pub commit: Option<String>,
}

/// Why a payload cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

// === impl GitHost ===

impl GitHost {
    pub fn as_str(self) -> &'static str {
        match self {
            GitHost::Github => "github",
            GitHost::Gitlab => "gitlab",
            GitHost::Gitea => "gitea",
            GitHost::Bitbucket => "bitbucket",
        }
    }

    /// The host a `/webhooks/{provider}` path names.
    pub fn from_path(s: &str) -> Option<GitHost> {
        match s {
            "github" => Some(GitHost::Github),
            "gitlab" => Some(GitHost::Gitlab),
            "gitea" | "forgejo" | "gogs" => Some(GitHost::Gitea),
            "bitbucket" => Some(GitHost::Bitbucket),
            _ => None,
        }
    }

    /// The host that sent a delivery, from its headers. Gitea, Forgejo and Gogs also send
    /// `X-GitHub-Event`, so their own headers are looked at first.
    pub fn detect(header: impl Fn(&str) -> Option<String>) -> Option<GitHost> {
        if ["x-gitea-event", "x-forgejo-event", "x-gogs-event"]
            .iter()
            .any(|h| header(h).is_some())
        {
            Some(GitHost::Gitea)
        } else if header("x-gitlab-event").is_some() {
            Some(GitHost::Gitlab)
        } else if header("x-event-key").is_some() {
            Some(GitHost::Bitbucket)
        } else if header("x-github-event").is_some() {
            Some(GitHost::Github)
        } else {
            None
        }
    }

    /// The delivery's event name, as the host's header gives it.
    pub fn event(self, header: impl Fn(&str) -> Option<String>) -> Option<String> {
        let names: &[&str] = match self {
            GitHost::Github => &["x-github-event"],
            GitHost::Gitlab => &["x-gitlab-event"],
            GitHost::Gitea => &["x-gitea-event", "x-forgejo-event", "x-gogs-event"],
            GitHost::Bitbucket => &["x-event-key"],
        };
        names.iter().find_map(|h| header(h))
    }

    /// The id the host gives a delivery (the same when it redelivers it).
    pub fn delivery_id(self, header: impl Fn(&str) -> Option<String>) -> Option<String> {
        let names: &[&str] = match self {
            GitHost::Github => &["x-github-delivery"],
            GitHost::Gitlab => &["x-gitlab-event-uuid", "idempotency-key", "webhook-id"],
            GitHost::Gitea => &["x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery"],
            GitHost::Bitbucket => &["x-request-uuid", "x-request-id"],
        };
        names
            .iter()
            .find_map(|h| header(h))
            .filter(|v| !v.is_empty())
    }

    /// Reads a delivery of `event`.
    pub fn parse(self, event: &str, body: &Value) -> Result<Hook, PayloadError> {
        match (self, event) {
            (GitHost::Github | GitHost::Gitea, "ping") => Ok(Hook::Ping),
            (GitHost::Bitbucket, "diagnostics:ping") => Ok(Hook::Ping),
            (GitHost::Github | GitHost::Gitea, "push") => github_push(body),
            (GitHost::Gitlab, "Push Hook" | "Tag Push Hook") => gitlab_push(body),
            (GitHost::Bitbucket, "repo:push") => bitbucket_cloud_push(body),
            (GitHost::Bitbucket, "repo:refs_changed") => bitbucket_server_push(body),
            _ => Ok(Hook::Other),
        }
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn missing(what: &str) -> PayloadError {
    PayloadError(format!("the payload has no {what}"))
}

/// `refs/heads/x` or `refs/tags/x`; anything else (notes, pull refs) is not deployed.
fn split_ref(full: &str) -> Option<(RefKind, String)> {
    if let Some(b) = full.strip_prefix("refs/heads/") {
        Some((RefKind::Branch, b.to_string()))
    } else {
        full.strip_prefix("refs/tags/")
            .map(|t| (RefKind::Tag, t.to_string()))
    }
}

/// A host's "no commit" (all zeros) means the ref was deleted.
fn commit_of(sha: Option<&str>) -> Option<String> {
    sha.filter(|s| !s.is_empty() && !s.bytes().all(|b| b == b'0'))
        .map(str::to_string)
}

fn urls(v: &Value, pointers: &[&str]) -> Vec<String> {
    pointers
        .iter()
        .filter_map(|p| text(v, p))
        .map(str::to_string)
        .collect()
}

fn single(full_ref: &str, commit: Option<String>, repository: Repository) -> Hook {
    let changes = match split_ref(full_ref) {
        Some((kind, name)) => vec![RefChange { kind, name, commit }],
        None => Vec::new(),
    };
    Hook::Push(Push {
        repository,
        changes,
    })
}

/// GitHub's, and Gitea's (the same shape).
fn github_push(body: &Value) -> Result<Hook, PayloadError> {
    let full_ref = text(body, "/ref").ok_or_else(|| missing("ref"))?;
    let deleted = body.get("deleted").and_then(Value::as_bool) == Some(true);
    let commit = if deleted {
        None
    } else {
        commit_of(text(body, "/after"))
    };
    let repository = Repository {
        full_name: text(body, "/repository/full_name").map(str::to_string),
        urls: urls(
            body,
            &[
                "/repository/clone_url",
                "/repository/ssh_url",
                "/repository/git_url",
                "/repository/html_url",
            ],
        ),
    };
    Ok(single(full_ref, commit, repository))
}

fn gitlab_push(body: &Value) -> Result<Hook, PayloadError> {
    let full_ref = text(body, "/ref").ok_or_else(|| missing("ref"))?;
    let commit = commit_of(text(body, "/after"));
    let repository = Repository {
        full_name: text(body, "/project/path_with_namespace").map(str::to_string),
        urls: urls(
            body,
            &[
                "/project/git_http_url",
                "/project/git_ssh_url",
                "/project/web_url",
                "/repository/git_http_url",
                "/repository/git_ssh_url",
                "/repository/homepage",
            ],
        ),
    };
    Ok(single(full_ref, commit, repository))
}

fn bitbucket_cloud_push(body: &Value) -> Result<Hook, PayloadError> {
    let changes = body
        .pointer("/push/changes")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("push.changes"))?;
    let mut out = Vec::new();
    for c in changes {
        // `new` is null when the ref was deleted; `old` then names it.
        let side = match c.get("new") {
            Some(n) if n.is_object() => n,
            _ => c.get("old").unwrap_or(&Value::Null),
        };
        let kind = match text(side, "/type") {
            Some("branch" | "named_branch") => RefKind::Branch,
            Some("tag" | "annotated_tag") => RefKind::Tag,
            _ => continue,
        };
        let Some(name) = text(side, "/name") else {
            continue;
        };
        let commit = c
            .get("new")
            .filter(|n| n.is_object())
            .and_then(|n| commit_of(text(n, "/target/hash")));
        out.push(RefChange {
            kind,
            name: name.to_string(),
            commit,
        });
    }
    let repository = Repository {
        full_name: text(body, "/repository/full_name").map(str::to_string),
        urls: urls(body, &["/repository/links/html/href"]),
    };
    Ok(Hook::Push(Push {
        repository,
        changes: out,
    }))
}

fn bitbucket_server_push(body: &Value) -> Result<Hook, PayloadError> {
    let changes = body
        .get("changes")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("changes"))?;
    let mut out = Vec::new();
    for c in changes {
        let Some(full_ref) = text(c, "/refId").or_else(|| text(c, "/ref/id")) else {
            continue;
        };
        let Some((kind, name)) = split_ref(full_ref) else {
            continue;
        };
        let commit = if text(c, "/type") == Some("DELETE") {
            None
        } else {
            commit_of(text(c, "/toHash"))
        };
        out.push(RefChange { kind, name, commit });
    }
    let full_name = match (
        text(body, "/repository/project/key"),
        text(body, "/repository/slug"),
    ) {
        (Some(p), Some(s)) => Some(format!("{p}/{s}")),
        _ => None,
    };
    let mut repo_urls: Vec<String> = body
        .pointer("/repository/links/clone")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| text(l, "/href").map(str::to_string))
        .collect();
    repo_urls.extend(urls(body, &["/repository/links/self/0/href"]));
    Ok(Hook::Push(Push {
        repository: Repository {
            full_name,
            urls: repo_urls,
        },
        changes: out,
    }))
}

/// A repository URL reduced to what identifies it: `github.com/owner/name` for
/// `https://github.com/Owner/Name.git`, `git@github.com:owner/name.git` and
/// `ssh://git@github.com:22/owner/name`; the path for `file:///srv/git/app.git`.
pub fn repository_key(url: &str) -> String {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let rest = if let Some(path) = lower.strip_prefix("file://") {
        path.to_string()
    } else if let Some(i) = lower.find("://") {
        let rest = &lower[i + 3..];
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit('@').next().unwrap_or(authority);
        let host = host.split(':').next().unwrap_or(host);
        // Bitbucket Server serves git under /scm/.
        let path = path.strip_prefix("scm/").unwrap_or(path);
        format!("{host}/{path}")
    } else if let Some((authority, path)) = lower.split_once(':') {
        // scp-like: user@host:path
        let host = authority.rsplit('@').next().unwrap_or(authority);
        format!("{host}/{}", path.trim_start_matches('/'))
    } else {
        lower
    };
    let rest = rest.trim_end_matches('/');
    rest.strip_suffix(".git").unwrap_or(rest).to_string()
}

// === impl Repository ===

impl Repository {
    /// Whether this is the repository at `url` (or named `full_name`, seed 000's `git_repo`).
    pub fn is(&self, url: Option<&str>, full_name: Option<&str>) -> bool {
        if let Some(url) = url {
            let key = repository_key(url);
            if self.urls.iter().any(|u| repository_key(u) == key) {
                return true;
            }
        }
        match (full_name, &self.full_name) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }

    /// How a delivery record names it.
    pub fn display(&self) -> String {
        self.full_name
            .clone()
            .or_else(|| self.urls.first().cloned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/webhooks")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn gitea_is_told_apart_from_github() {
        let gitea =
            |h: &str| matches!(h, "x-gitea-event" | "x-github-event").then(|| "push".to_string());
        assert_eq!(GitHost::detect(gitea), Some(GitHost::Gitea));
        let github = |h: &str| (h == "x-github-event").then(|| "push".to_string());
        assert_eq!(GitHost::detect(github), Some(GitHost::Github));
        assert_eq!(GitHost::detect(|_| None), None);
    }

    #[test]
    fn the_hosts_payloads_are_read() {
        let Hook::Push(p) = GitHost::Gitlab
            .parse("Push Hook", &fixture("gitlab-push.json"))
            .unwrap()
        else {
            panic!("not a push")
        };
        assert_eq!(
            p.changes,
            [RefChange {
                kind: RefKind::Branch,
                name: "master".into(),
                commit: Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into())
            }]
        );
        assert!(p
            .repository
            .is(Some("git@example.com:mike/diaspora.git"), None));
        assert!(p
            .repository
            .is(Some("https://example.com/mike/diaspora"), None));

        let Hook::Push(p) = GitHost::Gitea
            .parse("push", &fixture("gitea-push.json"))
            .unwrap()
        else {
            panic!("not a push")
        };
        assert_eq!(p.changes[0].name, "master");
        assert!(p.changes[0].commit.is_some());

        let Hook::Push(p) = GitHost::Bitbucket
            .parse("repo:push", &fixture("bitbucket-cloud-repo-push.json"))
            .unwrap()
        else {
            panic!("not a push")
        };
        assert_eq!(p.changes[0].kind, RefKind::Branch);
        assert_eq!(p.changes[0].name, "name-of-branch");
        assert_eq!(
            p.changes[0].commit.as_deref(),
            Some("709d658dc5b6d6afcd46049c2f332ee3f515a67d")
        );
        assert!(p.repository.is(None, Some("team_name/repo_name")));
    }

    #[test]
    fn deletions_name_no_commit() {
        let body = json!({"ref": "refs/heads/gone", "deleted": true,
            "after": "0000000000000000000000000000000000000000", "repository": {}});
        let Hook::Push(p) = GitHost::Github.parse("push", &body).unwrap() else {
            panic!()
        };
        assert_eq!(p.changes[0].commit, None);
        let server = json!({"changes": [
            {"refId": "refs/heads/main", "toHash": "abc123", "type": "UPDATE"},
            {"refId": "refs/tags/v1", "toHash": "0000000000000000000000000000000000000000", "type": "DELETE"}],
            "repository": {"slug": "app", "project": {"key": "OPS"},
                "links": {"clone": [{"href": "ssh://git@bb.example:7999/ops/app.git", "name": "ssh"}]}}});
        let Hook::Push(p) = GitHost::Bitbucket
            .parse("repo:refs_changed", &server)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(p.changes.len(), 2);
        assert_eq!(p.changes[1].commit, None);
        assert!(p
            .repository
            .is(Some("https://bb.example/scm/ops/app.git"), None));
        assert_eq!(GitHost::Github.parse("issues", &body).unwrap(), Hook::Other);
    }

    #[test]
    fn repository_keys() {
        for (a, b) in [
            ("https://github.com/Org/App.git", "github.com/org/app"),
            ("git@github.com:org/app.git", "github.com/org/app"),
            ("ssh://git@github.com:22/org/app", "github.com/org/app"),
            ("file:///srv/git/app.git", "/srv/git/app"),
            (
                "http://example.com/mike/diaspora/",
                "example.com/mike/diaspora",
            ),
        ] {
            assert_eq!(repository_key(a), b, "{a}");
        }
    }
}
