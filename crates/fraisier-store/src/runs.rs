//! Deployment runs: creation under the one-active-run rule, lookups, the filtered and sorted
//! listing of `GET /deployments`, and the engine's writes of a run's progress.

use chrono::{DateTime, Utc};
use fraisier_model::run::{to_wire, RunStatus};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::freezes::barrier_in;
use crate::sql::{
    self, contains_pattern, json, json_text, millis, now, ts, ts_opt, wire, Args, ACTIVE_STATUSES,
};
use crate::store::Backend;
use crate::turns::Priority;
use crate::{
    run_id_string, Event, NewRun, Result, Run, RunColumns, RunFilter, RunSortField, Store,
    StoreError,
};

/// What renewing a hold on a run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Still held; who asked to cancel it, if anyone.
    Held { cancel: Option<String> },
    /// It finished while held.
    Finished,
    /// Another server holds it now.
    Lost,
}

/// Every column of `runs`, in the order `import_runs` inserts them.
pub(crate) const RUN_COLUMNS: &str = "id, tenant_id, fraise, environment, kind, status, version, \
    previous_version, strategy, strategy_config, triggered_by, trigger_type, options, metadata, \
    created_at, updated_at, started_at, completed_at, health_check_status, health_details, \
    metrics, error_code, error_message, cancel_requested_by, cancelled_at, progress, \
    events_count, log_lines";

/// A new run may lose the race for the active slot to a run that finishes before we can name
/// it; then the slot is free and we try again, a bounded number of times.
const CREATE_ATTEMPTS: usize = 5;

// === impl Store ===

impl Store {
    /// Creates a `pending` run, unless another run is pending or in progress for the same
    /// tenant × fraise × environment: then `ActiveRunExists` names that run.
    ///
    /// Runs to completion even when the caller goes away (a client hanging up on a POST):
    /// a write abandoned half-way would commit without the listing totals hearing of it.
    pub async fn create_run(&self, new: &NewRun) -> Result<Run> {
        let mut made = self.create_runs(std::slice::from_ref(new)).await?;
        Ok(made.remove(0))
    }

    /// Creates several `pending` runs all at once or none: one refused (an active run, a
    /// lock, a freeze window) leaves the others unmade. In the order given.
    pub async fn create_runs(&self, new: &[NewRun]) -> Result<Vec<Run>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let (store, new) = (self.clone(), new.to_vec());
        tokio::spawn(async move { store.create_runs_now(&new).await })
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))?
    }

    async fn create_runs_now(&self, new: &[NewRun]) -> Result<Vec<Run>> {
        let mut attempt = 1;
        loop {
            match self.insert_runs(new).await {
                Err(e) if sql::is_unique_violation(&e) => {
                    for n in new {
                        if let Some(active) = self
                            .active_run_for(&n.tenant_id, &n.fraise, &n.environment)
                            .await?
                        {
                            return Err(StoreError::ActiveRunExists {
                                active_id: run_id_string(active.id),
                                fraise: active.fraise,
                                environment: active.environment,
                            });
                        }
                    }
                    if attempt == CREATE_ATTEMPTS {
                        return Err(e);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A run of `tenant`; another tenant's run is `NotFound`.
    pub async fn run(&self, tenant: &str, id: i64) -> Result<Run> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        run_from_row(&row)
    }

    /// One page of the runs matching `f`, and how many match in all.
    pub async fn list_runs(&self, tenant: &str, f: &RunFilter) -> Result<(Vec<Run>, u64)> {
        let mut args = Args::default();
        let mut clauses = vec![format!("tenant_id = {}", args.push(tenant))];
        if let Some(fraise) = &f.fraise {
            clauses.push(format!("fraise = {}", args.push(fraise.as_str())));
        }
        if let Some(fraises) = &f.fraises {
            if fraises.is_empty() {
                clauses.push("1 = 0".into());
            } else {
                let list: Vec<String> = fraises.iter().map(|x| args.push(x.as_str())).collect();
                clauses.push(format!("fraise IN ({})", list.join(", ")));
            }
        }
        if let Some(environment) = &f.environment {
            clauses.push(format!("environment = {}", args.push(environment.as_str())));
        }
        if let Some(status) = f.status {
            clauses.push(format!("status = {}", args.push(to_wire(&status))));
        }
        if let Some(q) = f.q.as_deref().filter(|q| !q.is_empty()) {
            let p = args.push(contains_pattern(q));
            let id = self.backend.run_id_expr();
            clauses.push(format!(
                "(lower(fraise) LIKE {p} ESCAPE '\\' OR lower(environment) LIKE {p} ESCAPE '\\' \
                 OR lower(version) LIKE {p} ESCAPE '\\' OR lower(triggered_by) LIKE {p} ESCAPE '\\' \
                 OR {id} LIKE {p} ESCAPE '\\')"
            ));
        }
        if let Some(after) = f.created_after {
            clauses.push(format!("created_at >= {}", args.push(millis(after))));
        }
        if let Some(before) = f.created_before {
            clauses.push(format!("created_at < {}", args.push(millis(before))));
        }
        let filter = clauses.join(" AND ");

        let total = self.count_runs(&filter, &args).await?;

        let column = match f.sort.field {
            RunSortField::CreatedAt => "created_at",
            RunSortField::UpdatedAt => "updated_at",
            RunSortField::Status => "status",
        };
        let direction = if f.sort.descending { "DESC" } else { "ASC" };
        let mut page = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE {filter} \
             ORDER BY {column} {direction}, id {direction}"
        );
        // SQLite takes OFFSET only after a LIMIT, so "no limit" is the largest one.
        let limit = if f.limit == 0 {
            i64::MAX
        } else {
            i64::from(f.limit)
        };
        let offset = i64::try_from(f.offset).unwrap_or(i64::MAX);
        page.push_str(&format!(
            " LIMIT {} OFFSET {}",
            args.push(limit),
            args.push(offset)
        ));
        let rows = args.bind(sqlx::query(&page)).fetch_all(&self.pool).await?;
        let runs = rows.iter().map(run_from_row).collect::<Result<_>>()?;
        Ok((runs, total))
    }

    /// How many runs match `filter`, remembered (on SQLite) until the next write to runs.
    async fn count_runs(&self, filter: &str, args: &Args) -> Result<u64> {
        let key = self
            .list_totals
            .as_ref()
            .map(|totals| (totals, totals.generation(), format!("{filter} {args:?}")));
        if let Some((totals, _, key)) = &key {
            if let Some(total) = totals.get(key) {
                return Ok(total);
            }
        }
        let row = args
            .clone()
            .bind(sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM runs WHERE {filter}"
            )))
            .fetch_one(&self.pool)
            .await?;
        let total = sql::count(&row, "n")?;
        if let Some((totals, generation, key)) = key {
            totals.remember(generation, key, total);
        }
        Ok(total)
    }

    /// Runs pending or in progress, over all tenants, oldest first: what a restarted server
    /// must resume.
    pub async fn active_runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status IN {ACTIVE_STATUSES} ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// The latest successful deploys of `version` to a fraise in an environment, newest first.
    pub async fn deploys_of(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        version: &str,
        limit: i64,
    ) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND version = $4 \
             AND kind = 'deploy' AND status = 'success' ORDER BY id DESC LIMIT $5"
        ))
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .bind(version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn active_run_for(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<Run>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND status IN {ACTIVE_STATUSES}"
        ))
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The oldest run of a fraise in an environment created after run `after` (by id),
    /// whatever its status. The runs of one fraise in one environment run one at a time, so
    /// this is the next one to start after `after`.
    pub async fn next_run_after(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        after: i64,
    ) -> Result<Option<Run>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND id > $4 \
             ORDER BY id LIMIT 1"
        ))
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .bind(after)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The newest run (by id) of a fraise in an environment, whatever its status.
    pub async fn last_run_for(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<Run>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 ORDER BY id DESC LIMIT 1"
        ))
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Writes the options of a finished run — a note made after it, such as "its migrations
    /// were undone by a rollback". Not under the lease guard of [`Store::write_run`]: the
    /// server that ran it may be another, and its lease stays on the row. An active run is
    /// not written (`NotFound`): its executor owns its options.
    pub async fn write_finished_run_options(&self, run: &Run) -> Result<()> {
        let turn = self.turn(Priority::Background).await;
        let done = sqlx::query(&format!(
            "UPDATE runs SET options = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4 AND status NOT IN {ACTIVE_STATUSES}"
        ))
        .bind(json_text(&run.options))
        .bind(millis(now()))
        .bind(run.tenant_id.as_str())
        .bind(run.id)
        .execute(&self.writer)
        .await?;
        drop(turn);
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Writes every column a server executing `run` owns; see [`Store::write_run`].
    pub async fn save_run(&self, run: &Run) -> Result<()> {
        self.write_run(run, RunColumns::ALL).await
    }

    /// Writes `columns` of `run`, and no other, and sets `updated_at` to now: what another
    /// server records meanwhile (a cancel, counts of events and log lines, its lease) is
    /// never overwritten with this server's older copy, and a cancel already recorded is
    /// kept whatever `run` says. A run held by another server (`hold_runs_as`) is not
    /// written: `NotFound`, which stops the executor that lost it. Making a final run active
    /// again while another is active is `ActiveRunExists`.
    pub async fn write_run(&self, run: &Run, columns: RunColumns) -> Result<()> {
        let (statement, args) = self.run_update(run, columns);
        let turn = self.turn(Priority::Background).await;
        let result = args
            .bind(sqlx::query(&statement))
            .execute(&self.writer)
            .await
            .map_err(StoreError::from);
        drop(turn);
        self.runs_changed();
        self.run_written(run, result).await
    }

    /// Writes `columns` of `run` as [`Store::write_run`] does and records its last event in
    /// the same transaction: whoever reads the run ended also finds the event that ends it,
    /// and a server stopped between the two cannot leave one without the other.
    pub async fn end_run(
        &self,
        run: &Run,
        columns: RunColumns,
        event_type: &str,
        data: &Value,
    ) -> Result<Event> {
        let (statement, args) = self.run_update(run, columns);
        let mut tx = self.begin_write().await?;
        let updated = args
            .bind(sqlx::query(&statement))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from);
        self.run_written(run, updated).await?;
        let event = self
            .insert_event(
                &mut tx,
                &run.tenant_id,
                Some(run.id),
                &run.fraise,
                &run.environment,
                event_type,
                data,
            )
            .await?;
        tx.commit().await?;
        self.runs_changed();
        Ok(event)
    }

    /// The `UPDATE` of `columns` of `run`, guarded by the lease: see [`Store::write_run`].
    fn run_update(&self, run: &Run, columns: RunColumns) -> (String, Args) {
        let mut args = Args::default();
        let tenant = args.push(run.tenant_id.as_str());
        let id = args.push(run.id);
        let mut sets = Vec::new();
        if columns.status {
            sets.push(format!("status = {}", args.push(to_wire(&run.status))));
            sets.push(format!(
                "started_at = {}",
                args.push(run.started_at.map(millis))
            ));
            sets.push(format!(
                "completed_at = {}",
                args.push(run.completed_at.map(millis))
            ));
            sets.push(format!(
                "cancelled_at = {}",
                args.push(run.cancelled_at.map(millis))
            ));
            // A cancel is recorded once, by whoever asked first.
            sets.push(format!(
                "cancel_requested_by = COALESCE(cancel_requested_by, {})",
                args.push(run.cancel_requested_by.clone())
            ));
        }
        if columns.outcome {
            sets.push(format!(
                "error_code = {}",
                args.push(run.error_code.clone())
            ));
            sets.push(format!(
                "error_message = {}",
                args.push(run.error_message.clone())
            ));
            sets.push(format!(
                "health_check_status = {}",
                args.push(run.health_check_status.as_str())
            ));
            sets.push(format!(
                "health_details = {}",
                args.push(json_text(&run.health_details))
            ));
            sets.push(format!("metrics = {}", args.push(json_text(&run.metrics))));
        }
        if columns.progress {
            sets.push(format!("progress = {}", args.push(run.progress)));
        }
        if columns.options {
            sets.push(format!("options = {}", args.push(json_text(&run.options))));
            sets.push(format!(
                "metadata = {}",
                args.push(json_text(&run.metadata))
            ));
        }
        if columns.version {
            sets.push(format!("version = {}", args.push(run.version.as_str())));
            sets.push(format!(
                "previous_version = {}",
                args.push(run.previous_version.clone())
            ));
        }
        sets.push(format!("updated_at = {}", args.push(millis(now()))));
        let holder = args.push(self.roles.holder.get().cloned());
        let statement = format!(
            "UPDATE runs SET {} WHERE tenant_id = {tenant} AND id = {id} \
             AND ({holder} IS NULL OR lease_owner IS NULL OR lease_owner = {holder})",
            sets.join(", ")
        );
        (statement, args)
    }

    /// What an `UPDATE` of a run came to.
    async fn run_written(
        &self,
        run: &Run,
        result: Result<sqlx::any::AnyQueryResult>,
    ) -> Result<()> {
        match result {
            Ok(done) if done.rows_affected() == 0 => Err(StoreError::NotFound),
            Ok(_) => Ok(()),
            Err(e) if sql::is_unique_violation(&e) => {
                let active = self
                    .active_run_for(&run.tenant_id, &run.fraise, &run.environment)
                    .await?;
                Err(StoreError::ActiveRunExists {
                    active_id: active
                        .map_or_else(|| run_id_string(run.id), |a| run_id_string(a.id)),
                    fraise: run.fraise.clone(),
                    environment: run.environment.clone(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the runs that need a server: active, and held by none (for a while) or by one
    /// whose hold lapsed. Each is leased to `owner` until `until`. On PostgreSQL rows another server is
    /// claiming are skipped (`FOR UPDATE SKIP LOCKED`) rather than waited for; SQLite has one
    /// writer, so its UPDATE is atomic as it is.
    pub async fn claim_runs(
        &self,
        owner: &str,
        until: DateTime<Utc>,
        limit: u32,
        // Every active run, held or not: for the one server of an SQLite database, at start.
        everything: bool,
        // A run never held is left to the server that created it (which holds it at once)
        // unless it was created before this.
        unheld_before: DateTime<Utc>,
    ) -> Result<Vec<Run>> {
        let skip = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let turn = self.turn(Priority::Background).await;
        let rows = sqlx::query(&format!(
            "UPDATE runs SET lease_owner = $1, lease_expires_at = $2 WHERE id IN (\
             SELECT id FROM runs WHERE status IN {ACTIVE_STATUSES} \
             AND ((lease_owner IS NULL AND created_at < $6) OR lease_expires_at < $3 OR $5 = 1) \
             ORDER BY created_at, id LIMIT $4{skip}) RETURNING {RUN_COLUMNS}"
        ))
        .bind(owner)
        .bind(millis(until))
        .bind(millis(now()))
        .bind(i64::from(limit))
        .bind(i64::from(everything))
        .bind(millis(unheld_before))
        .fetch_all(&self.writer)
        .await;
        drop(turn);
        let mut runs = rows?.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        runs.sort_by_key(|r| (r.created_at, r.id));
        Ok(runs)
    }

    /// Takes one run for `owner` unless another server holds it (unexpired): a run just
    /// created, or one this server holds already. `false`: someone else runs it.
    pub async fn claim_run(&self, id: i64, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(&format!(
            "UPDATE runs SET lease_owner = $1, lease_expires_at = $2 \
             WHERE id = $3 AND status IN {ACTIVE_STATUSES} \
             AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < $4)"
        ))
        .bind(owner)
        .bind(millis(until))
        .bind(id)
        .bind(millis(now()))
        .execute(&self.writer)
        .await;
        drop(turn);
        Ok(done?.rows_affected() > 0)
    }

    /// Extends `owner`'s hold on a run, and says who asked to cancel it, if anyone did — on
    /// any server.
    pub async fn renew_run_lease(
        &self,
        id: i64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<Renewal> {
        let turn = self.turn(Priority::Interactive).await;
        let row = sqlx::query(&format!(
            "UPDATE runs SET lease_expires_at = $1 \
             WHERE id = $2 AND lease_owner = $3 AND status IN {ACTIVE_STATUSES} \
             RETURNING cancel_requested_by"
        ))
        .bind(millis(until))
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.writer)
        .await;
        drop(turn);
        if let Some(r) = row? {
            return Ok(Renewal::Held {
                cancel: r.try_get("cancel_requested_by")?,
            });
        }
        // Not renewed: finished (its last writes may still be under way), or someone else's.
        let row = sqlx::query("SELECT status, lease_owner FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(Renewal::Lost);
        };
        let status: RunStatus = wire(&row, "status")?;
        let holder: Option<String> = row.try_get("lease_owner")?;
        Ok(if status.is_final() && holder.as_deref() == Some(owner) {
            Renewal::Finished
        } else {
            Renewal::Lost
        })
    }

    /// Who holds a run, and until when.
    pub async fn run_lease(&self, id: i64) -> Result<Option<(String, DateTime<Utc>)>> {
        let row = sqlx::query("SELECT lease_owner, lease_expires_at FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        let owner: Option<String> = row.try_get("lease_owner")?;
        Ok(match (owner, ts_opt(&row, "lease_expires_at")?) {
            (Some(o), Some(t)) => Some((o, t)),
            _ => None,
        })
    }

    /// Records who asked to cancel a run that has not finished (the first asker wins); the
    /// engine acts on it at its next safe point. Returns the run as it now is.
    pub async fn request_cancel(&self, tenant: &str, id: i64, by: &str) -> Result<Run> {
        let turn = self.turn(Priority::Interactive).await;
        sqlx::query(&format!(
            "UPDATE runs SET cancel_requested_by = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND status IN {ACTIVE_STATUSES} \
             AND cancel_requested_by IS NULL"
        ))
        .bind(tenant)
        .bind(id)
        .bind(by)
        .bind(millis(now()))
        .execute(&self.writer)
        .await?;
        drop(turn);
        self.run(tenant, id).await
    }

    async fn insert_runs(&self, new: &[NewRun]) -> Result<Vec<Run>> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        // Taken in one order, so that two such writes cannot deadlock on each other's holds.
        let mut environments: Vec<(&str, &str)> = new
            .iter()
            .map(|n| (n.tenant_id.as_str(), n.environment.as_str()))
            .collect();
        environments.sort_unstable();
        environments.dedup();
        // Its deletion counts the active runs: one is not started in it meanwhile.
        for (tenant, environment) in environments {
            self.hold_environment(&mut tx, tenant, environment).await?;
        }
        let mut made = Vec::with_capacity(new.len());
        for new in new {
            // A lock or freeze window taken since the requester's guards were checked (a source
            // resolved from git can take seconds, another server may take it) still keeps the
            // run out: every one that committed before this point is seen.
            if let Some(barrier) =
                barrier_in(&mut tx, &new.tenant_id, &new.environment, &new.triggered_by).await?
            {
                return Err(StoreError::Barred(Box::new(barrier)));
            }
            let now = millis(now());
            let row = sqlx::query(&format!(
                "INSERT INTO runs (tenant_id, fraise, environment, kind, status, version, \
                 previous_version, strategy, strategy_config, triggered_by, trigger_type, options, \
                 metadata, created_at, updated_at, health_check_status, health_details, metrics, \
                 progress, events_count, log_lines) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, 'unknown', \
                 '{{}}', '{{}}', -1, 0, 0) \
                 RETURNING {RUN_COLUMNS}"
            ))
            .bind(&new.tenant_id)
            .bind(&new.fraise)
            .bind(&new.environment)
            .bind(to_wire(&new.kind))
            .bind(to_wire(&RunStatus::Pending))
            .bind(&new.version)
            .bind(&new.previous_version)
            .bind(&new.strategy)
            .bind(json_text(&new.strategy_config))
            .bind(&new.triggered_by)
            .bind(&new.trigger_type)
            .bind(json_text(&new.options))
            .bind(json_text(&new.metadata))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            made.push(run_from_row(&row)?);
        }
        tx.commit().await?;
        self.runs_changed();
        Ok(made)
    }
}

pub(crate) fn run_from_row(row: &AnyRow) -> Result<Run> {
    Ok(Run {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        fraise: row.try_get("fraise")?,
        environment: row.try_get("environment")?,
        kind: wire(row, "kind")?,
        status: wire(row, "status")?,
        version: row.try_get("version")?,
        previous_version: row.try_get("previous_version")?,
        strategy: row.try_get("strategy")?,
        strategy_config: json(row, "strategy_config")?,
        triggered_by: row.try_get("triggered_by")?,
        trigger_type: row.try_get("trigger_type")?,
        options: json(row, "options")?,
        metadata: json(row, "metadata")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
        started_at: ts_opt(row, "started_at")?,
        completed_at: ts_opt(row, "completed_at")?,
        // Rows imported from elsewhere may spell it otherwise: unknown, not unreadable.
        health_check_status: row
            .try_get::<String, _>("health_check_status")
            .ok()
            .and_then(|s| fraisier_model::run::from_wire(&s))
            .unwrap_or_default(),
        health_details: json(row, "health_details")?,
        metrics: json(row, "metrics")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        cancel_requested_by: row.try_get("cancel_requested_by")?,
        cancelled_at: ts_opt(row, "cancelled_at")?,
        progress: row.try_get("progress")?,
        events_count: row.try_get("events_count")?,
        log_lines: row.try_get("log_lines")?,
    })
}
