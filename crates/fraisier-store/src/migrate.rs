//! Brings a database's schema up to date: one ordered migration list for both backends,
//! applied once each and recorded in `schema_migrations`.
//!
//! Applied migrations are history: never edit one, add the next.

use sqlx::Row;

use crate::sql::{millis, now};
use crate::store::{Backend, Store};
use crate::Result;

struct Migration {
    version: i64,
    name: &'static str,
    statements: &'static [&'static str],
}

/// Serializes concurrent `open`s of one PostgreSQL database (several servers starting at once).
const PG_MIGRATION_LOCK: i64 = 0x6672_6169_7369_6572; // "fraisier"

/// The schema, for both backends: `{ID}` stands for the auto-increment primary key, the one
/// column type they spell differently.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        statements: &[
            "CREATE TABLE users (
            id {ID},
            tenant_id TEXT NOT NULL,
            username TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            roles TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE UNIQUE INDEX users_tenant_username ON users (tenant_id, username)",
            "CREATE TABLE runs (
            id {ID},
            tenant_id TEXT NOT NULL,
            fraise TEXT NOT NULL,
            environment TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            version TEXT NOT NULL,
            previous_version TEXT,
            strategy TEXT NOT NULL,
            strategy_config TEXT NOT NULL,
            triggered_by TEXT NOT NULL,
            trigger_type TEXT NOT NULL,
            options TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            started_at BIGINT,
            completed_at BIGINT,
            health_check_status TEXT NOT NULL,
            health_details TEXT NOT NULL,
            metrics TEXT NOT NULL,
            error_code TEXT,
            error_message TEXT,
            cancel_requested_by TEXT,
            cancelled_at BIGINT,
            progress BIGINT NOT NULL,
            events_count BIGINT NOT NULL DEFAULT 0,
            log_lines BIGINT NOT NULL DEFAULT 0
        )",
            "CREATE UNIQUE INDEX runs_one_active ON runs (tenant_id, fraise, environment)
            WHERE status IN ('pending', 'in_progress')",
            "CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at, id)",
            "CREATE INDEX runs_tenant_updated ON runs (tenant_id, updated_at, id)",
            "CREATE INDEX runs_tenant_status ON runs (tenant_id, status, id)",
            "CREATE INDEX runs_tenant_service ON runs (tenant_id, fraise, environment, id)",
            "CREATE INDEX runs_tenant_environment ON runs (tenant_id, environment, id)",
            "CREATE INDEX runs_status_environment ON runs (status, environment, tenant_id)",
            "CREATE TABLE steps (
            id {ID},
            tenant_id TEXT NOT NULL,
            run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            message TEXT,
            error TEXT,
            started_at BIGINT NOT NULL,
            ended_at BIGINT
        )",
            "CREATE UNIQUE INDEX steps_run_seq ON steps (run_id, seq)",
            "CREATE TABLE events (
            id {ID},
            tenant_id TEXT NOT NULL,
            run_id BIGINT REFERENCES runs (id) ON DELETE CASCADE,
            fraise TEXT NOT NULL,
            environment TEXT NOT NULL,
            event_type TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE INDEX events_run ON events (run_id, id)",
            "CREATE INDEX events_service ON events (tenant_id, fraise, environment, id)",
            "CREATE TABLE logs (
            id {ID},
            tenant_id TEXT NOT NULL,
            run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            level TEXT NOT NULL,
            component TEXT NOT NULL,
            message TEXT NOT NULL,
            details TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE INDEX logs_run ON logs (run_id, id)",
            "CREATE TABLE services (
            tenant_id TEXT NOT NULL,
            fraise TEXT NOT NULL,
            environment TEXT NOT NULL,
            current_version TEXT,
            previous_version TEXT,
            state TEXT NOT NULL,
            desired TEXT,
            last_run_id BIGINT,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, fraise, environment)
        )",
        ],
    },
    Migration {
        version: 2,
        name: "access_users_in_workspaces_tokens_api_keys_audit",
        statements: &[
            // Usernames become global; roles move to a membership per workspace.
            "DROP INDEX users_tenant_username",
            "CREATE TABLE memberships (
            user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            workspace TEXT NOT NULL,
            roles TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, workspace)
        )",
            "CREATE INDEX memberships_workspace ON memberships (workspace, user_id)",
            "INSERT INTO memberships (user_id, workspace, roles, created_at)
            SELECT id, tenant_id, roles, created_at FROM users",
            "ALTER TABLE users DROP COLUMN roles",
            "ALTER TABLE users DROP COLUMN tenant_id",
            "ALTER TABLE users ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE users ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0",
            "UPDATE users SET updated_at = created_at",
            "CREATE UNIQUE INDEX users_username ON users (username)",
            "CREATE TABLE revoked_tokens (
            jti TEXT PRIMARY KEY,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT NOT NULL
        )",
            "CREATE TABLE api_keys (
            id {ID},
            workspace TEXT NOT NULL,
            user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            roles TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            last_used_at BIGINT,
            revoked_at BIGINT
        )",
            "CREATE UNIQUE INDEX api_keys_hash ON api_keys (key_hash)",
            "CREATE INDEX api_keys_workspace ON api_keys (workspace, user_id, id)",
            "CREATE TABLE audit_log (
            id {ID},
            workspace TEXT NOT NULL,
            actor TEXT NOT NULL,
            actor_kind TEXT NOT NULL,
            credential TEXT,
            action TEXT NOT NULL,
            resource TEXT NOT NULL,
            service TEXT,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            request_id TEXT NOT NULL,
            source TEXT NOT NULL,
            outcome TEXT,
            status BIGINT NOT NULL,
            detail TEXT,
            created_at BIGINT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )",
            "CREATE INDEX audit_workspace ON audit_log (workspace, id)",
            "CREATE INDEX audit_resource ON audit_log (workspace, resource, id)",
            "CREATE INDEX audit_service ON audit_log (workspace, service, id)",
        ],
    },
    Migration {
        version: 3,
        name: "approvals",
        statements: &[
            "CREATE TABLE approvals (
            id {ID},
            tenant_id TEXT NOT NULL,
            run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            username TEXT NOT NULL,
            decision TEXT NOT NULL,
            comment TEXT,
            created_at BIGINT NOT NULL
        )",
            "CREATE UNIQUE INDEX approvals_run_user ON approvals (run_id, username)",
        ],
    },
    Migration {
        version: 4,
        name: "workspaces_and_projects",
        statements: &[
            // `declared`: written in fraisier.yaml (1), or made through the API (0).
            "CREATE TABLE workspaces (
            name TEXT PRIMARY KEY,
            display_name TEXT,
            description TEXT,
            declared BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE TABLE projects (
            workspace TEXT NOT NULL,
            name TEXT NOT NULL,
            display_name TEXT,
            description TEXT,
            declared BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (workspace, name)
        )",
        ],
    },
    Migration {
        version: 5,
        name: "variables",
        statements: &[
            // A service deployment's variables set through the API; `secret`: the value is a
            // sealed value (JSON), never the plaintext.
            "CREATE TABLE variables (
            tenant_id TEXT NOT NULL,
            fraise TEXT NOT NULL,
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            secret BIGINT NOT NULL,
            value TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            updated_by TEXT NOT NULL,
            PRIMARY KEY (tenant_id, fraise, environment, name)
        )",
        ],
    },
    Migration {
        version: 6,
        name: "artifacts",
        statements: &[
            // A named artifact of a workspace (seed 003's registry); its bytes are blobs in
            // the data dir, named by digest.
            "CREATE TABLE artifacts (
            id {ID},
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            description TEXT,
            tags TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            created_by TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE UNIQUE INDEX artifacts_name ON artifacts (tenant_id, name)",
            // Versions are immutable: the same version always names the same bytes.
            "CREATE TABLE artifact_versions (
            id {ID},
            artifact_id BIGINT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
            version TEXT NOT NULL,
            digest TEXT NOT NULL,
            size BIGINT NOT NULL,
            format TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            created_by TEXT NOT NULL
        )",
            "CREATE UNIQUE INDEX artifact_versions_version ON artifact_versions (artifact_id, version)",
            "CREATE INDEX artifact_versions_digest ON artifact_versions (digest)",
        ],
    },
    Migration {
        version: 7,
        name: "webhook deliveries",
        statements: &[
            // Every delivery a git host made, accepted or not. `dedup_key` (host and delivery
            // id) is set on accepted deliveries only, so a replay is caught by the index and a
            // forged delivery cannot block the real one.
            "CREATE TABLE webhook_deliveries (
            id {ID},
            provider TEXT NOT NULL,
            event TEXT NOT NULL,
            delivery_id TEXT,
            dedup_key TEXT,
            repository TEXT NOT NULL,
            ref TEXT,
            commit_sha TEXT,
            outcome TEXT NOT NULL,
            message TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at BIGINT NOT NULL
        )",
            "CREATE UNIQUE INDEX webhook_deliveries_dedup ON webhook_deliveries (dedup_key)",
            // The environments a delivery concerned, each in its workspace.
            "CREATE TABLE webhook_targets (
            delivery BIGINT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
            workspace TEXT NOT NULL,
            fraise TEXT NOT NULL,
            environment TEXT NOT NULL,
            ref TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            deployment_id TEXT,
            error_code TEXT,
            error_message TEXT
        )",
            "CREATE INDEX webhook_targets_delivery ON webhook_targets (delivery)",
            "CREATE INDEX webhook_targets_workspace ON webhook_targets (workspace, delivery)",
        ],
    },
    Migration {
        version: 8,
        name: "notifications",
        statements: &[
            // An outbox: a run's event to announce somewhere, written with the event and sent
            // off the run's path. The destination is named by where it is configured (scope
            // and index), never by its URL, which may hold a credential.
            "CREATE TABLE notifications (
            id {ID},
            tenant_id TEXT NOT NULL,
            run_id BIGINT,
            fraise TEXT NOT NULL,
            environment TEXT NOT NULL,
            event TEXT NOT NULL,
            kind TEXT NOT NULL,
            scope TEXT NOT NULL,
            position BIGINT NOT NULL,
            target TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts BIGINT NOT NULL,
            next_attempt_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE INDEX notifications_due ON notifications (status, next_attempt_at)",
            "CREATE INDEX notifications_tenant ON notifications (tenant_id, id)",
            "CREATE TABLE notification_attempts (
            notification BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
            attempt BIGINT NOT NULL,
            at BIGINT NOT NULL,
            status_code BIGINT,
            error TEXT,
            duration_ms BIGINT NOT NULL
        )",
            "CREATE INDEX notification_attempts_notification ON notification_attempts (notification)",
        ],
    },
    Migration {
        version: 9,
        name: "queued pushes index",
        statements: &[
            // Polled twice a second: only the few queued targets, not every delivery's.
            "CREATE INDEX webhook_targets_queued ON webhook_targets (delivery) WHERE error_code = 'QUEUED'",
        ],
    },
    Migration {
        version: 10,
        name: "environment locks and freeze windows",
        statements: &[
            // At most one lock per environment: who holds it and why.
            "CREATE TABLE environment_locks (
            tenant_id TEXT NOT NULL,
            environment TEXT NOT NULL,
            locked_by TEXT NOT NULL,
            reason TEXT,
            locked_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, environment)
        )",
            "CREATE TABLE freeze_windows (
            id {ID},
            tenant_id TEXT NOT NULL,
            environment TEXT NOT NULL,
            starts_at BIGINT NOT NULL,
            ends_at BIGINT NOT NULL,
            reason TEXT,
            exceptions TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            created_by TEXT NOT NULL
        )",
            "CREATE INDEX freeze_windows_environment ON freeze_windows (tenant_id, environment, ends_at)",
        ],
    },
    Migration {
        version: 11,
        name: "environment limits",
        statements: &["CREATE TABLE environment_limits (
            tenant_id TEXT NOT NULL,
            environment TEXT NOT NULL,
            max_instances BIGINT,
            updated_by TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, environment)
        )"],
    },
    Migration {
        version: 12,
        name: "notification destinations by digest",
        statements: &["ALTER TABLE notifications ADD COLUMN fingerprint TEXT"],
    },
    Migration {
        version: 13,
        name: "agents and join tokens",
        statements: &[
            // `workspace` is '*' for the server's own agent, which serves every workspace.
            // Revoked agents stay, so the audit trail's ids keep meaning someone.
            "CREATE TABLE agents (
            id {ID},
            workspace TEXT NOT NULL,
            name TEXT NOT NULL,
            labels TEXT NOT NULL,
            credential_hash TEXT NOT NULL,
            draining BIGINT NOT NULL,
            version TEXT NOT NULL,
            capabilities TEXT NOT NULL,
            host TEXT NOT NULL,
            services BIGINT NOT NULL,
            instances BIGINT NOT NULL,
            registered_at BIGINT NOT NULL,
            registered_by TEXT NOT NULL,
            last_heartbeat_at BIGINT,
            revoked_at BIGINT,
            revoked_by TEXT
        )",
            "CREATE UNIQUE INDEX agents_live_name ON agents (workspace, name) WHERE revoked_at IS NULL",
            "CREATE UNIQUE INDEX agents_credential ON agents (credential_hash)",
            "CREATE TABLE agent_join_tokens (
            id {ID},
            workspace TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            uses_left BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
        ],
    },
    Migration {
        version: 14,
        name: "targets and target groups",
        statements: &[
            // Targets described through the API; agents stay in `agents` and are members of
            // groups by their `agt_…` reference.
            "CREATE TABLE targets (
            id {ID},
            workspace TEXT NOT NULL,
            environment TEXT,
            name TEXT NOT NULL,
            target_type TEXT NOT NULL,
            connection TEXT NOT NULL,
            labels TEXT NOT NULL,
            deployment_directory TEXT,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE UNIQUE INDEX targets_name ON targets (workspace, name)",
            "CREATE TABLE target_groups (
            id {ID},
            workspace TEXT NOT NULL,
            environment TEXT NOT NULL,
            name TEXT NOT NULL,
            description TEXT,
            labels TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE UNIQUE INDEX target_groups_name ON target_groups (workspace, environment, name)",
            "CREATE TABLE target_group_members (
            group_id BIGINT NOT NULL,
            member TEXT NOT NULL,
            position BIGINT NOT NULL,
            PRIMARY KEY (group_id, member)
        )",
            "CREATE INDEX target_group_members_member ON target_group_members (member)",
        ],
    },
    Migration {
        version: 15,
        name: "run leases",
        statements: &[
            // The server executing a run, and until when its hold lasts unrenewed.
            "ALTER TABLE runs ADD COLUMN lease_owner TEXT",
            "ALTER TABLE runs ADD COLUMN lease_expires_at BIGINT",
        ],
    },
    Migration {
        version: 16,
        name: "events published to the bus",
        statements: &[
            // When the event bus acknowledged the event; 0 for those recorded before there
            // was a bus to publish to (they are not sent after the fact).
            "ALTER TABLE events ADD COLUMN published_at BIGINT",
            "UPDATE events SET published_at = 0",
            "CREATE INDEX events_unpublished ON events (id) WHERE published_at IS NULL",
        ],
    },
    Migration {
        version: 17,
        name: "environments as data",
        statements: &[
            // The settings the API set on an environment (JSON, only those it set), over what
            // fraisier.yaml declares; `deleted_at`: the API deleted it.
            "CREATE TABLE environments (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            settings TEXT NOT NULL,
            deleted_at BIGINT,
            created_at BIGINT NOT NULL,
            created_by TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            updated_by TEXT NOT NULL,
            PRIMARY KEY (tenant_id, name)
        )",
        ],
    },
    Migration {
        version: 18,
        name: "job leases",
        statements: &[
            // Work one server at a time does for all (sending notifications, deploying queued
            // pushes, publishing events): who does it, and until when unless renewed.
            "CREATE TABLE job_leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at BIGINT NOT NULL
        )",
        ],
    },
];

/// Applies the migrations not yet recorded, all in one transaction: a schema is never left
/// half-migrated.
pub(crate) async fn run(store: &Store) -> Result<()> {
    let id = match store.backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    };
    let mut tx = store.begin_write().await?;
    if store.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at BIGINT NOT NULL
        )",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("version"))
        .collect::<Result<_, _>>()?;
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for statement in migration.statements {
            sqlx::query(&statement.replace("{ID}", id))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(millis(now()))
        .execute(&mut *tx)
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_name_the_key_type_once_per_table() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        for m in MIGRATIONS {
            for st in m
                .statements
                .iter()
                .filter(|st| st.starts_with("CREATE TABLE"))
            {
                let has_id = st.contains("\n            id ");
                assert_eq!(has_id, st.contains("id {ID},"), "{st}");
            }
        }
    }
}
