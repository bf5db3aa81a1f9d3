//! The store's behaviour, written once and run against SQLite (always) and PostgreSQL (when
//! `FRAISIER_TEST_DATABASE_URL` is set), each test on a database of its own.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Instant, SystemTime};

use chrono::{DateTime, Duration, Utc};
use fraisier_model::run::{Component, LogLevel, RunKind, RunStatus, ServiceState, StepStatus};
use fraisier_model::service::{
    DesiredInstance, DesiredService, HealthCheckSpec, ProbeKind, ReleaseSpec,
};
use fraisier_model::FraiseType;
use fraisier_store::{
    parse_run_id, run_id_string, LogFilter, NewRun, Renewal, Run, RunColumns, RunFilter, RunSort,
    RunSortField, ServiceRecord, Store, StoreError, DEFAULT_TENANT,
};
use serde_json::json;
use sqlx::{Connection, Executor};
use tempfile::TempDir;

const PG_URL_VAR: &str = "FRAISIER_TEST_DATABASE_URL";

/// Generates, for every suite function, one test per backend.
macro_rules! store_suite {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }

        mod postgres {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres().await else {
                        println!("skipped: {} is not set", super::PG_URL_VAR);
                        return;
                    };
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }
    };
}

store_suite! {
    migrations_are_idempotent,
    create_and_get_run,
    one_active_run_per_fraise_and_environment,
    concurrent_creates_let_exactly_one_win,
    finishing_a_run_frees_the_slot,
    save_run_writes_every_mutable_field,
    request_cancel_records_the_first_asker,
    a_write_of_some_columns_leaves_the_others_as_another_server_left_them,
    list_runs_filters,
    list_runs_totals_follow_every_write,
    list_runs_sorts_and_pages,
    tenants_are_isolated,
    steps_keep_their_order,
    events_and_logs_are_counted_on_the_run,
    logs_filter_by_level_component_lines_and_after_id,
    service_records_round_trip,
    run_stats_buckets,
    import_then_create_continues_ids,
    users_create_lookup_and_duplicates,
    api_keys_are_found_by_hash_and_scoped,
    audit_records_chain_and_tampering_is_found,
    workspaces_and_projects_are_declared_made_and_scoped,
    variables_change_all_or_nothing_and_restore,
    artifact_versions_are_immutable_and_scoped,
    a_join_token_admits_as_many_agents_as_it_has_uses,
    targets_and_groups_keep_members_and_change_per_field,
    a_run_is_held_by_one_server_and_taken_over_when_the_hold_lapses,
    environments_are_written_deleted_and_made_again,
    nothing_is_put_in_an_environment_being_deleted,
    no_run_is_recorded_in_an_environment_locked_or_frozen_against_its_trigger,
    runs_made_together_are_all_recorded_or_none,
    a_job_is_held_by_one_server_until_its_lease_lapses,
    #[ignore = "slow: run with --ignored to check the benchmark's seeding speed"]
    import_100k_runs_takes_seconds,
}

/// A job's lease: one holder at a time, renewed by it, taken by another only once lapsed;
/// jobs are held apart.
async fn a_job_is_held_by_one_server_until_its_lease_lapses(db: &TestDb) {
    let s = &db.store;
    let later = Utc::now() + Duration::seconds(30);
    assert!(s.hold_job("notifications", "a", later).await.unwrap());
    assert!(!s.hold_job("notifications", "b", later).await.unwrap());
    assert!(
        s.hold_job("notifications", "a", later).await.unwrap(),
        "renewed"
    );
    assert!(
        s.hold_job("events", "b", later).await.unwrap(),
        "another job"
    );
    // Four servers at once on a free job: one gets it.
    let tries = ["c", "d", "e", "f"].map(|o| s.hold_job("pushes", o, later));
    let held = futures_util_join(tries).await;
    assert_eq!(held.iter().filter(|h| **h).count(), 1, "{held:?}");
    // a's hold lapses (its last renewal ran out): b takes it, and a no longer holds it.
    let past = Utc::now() - Duration::seconds(1);
    assert!(s.hold_job("notifications", "a", past).await.unwrap());
    assert!(s.hold_job("notifications", "b", later).await.unwrap());
    assert!(!s.hold_job("notifications", "a", later).await.unwrap());
}

async fn futures_util_join<F: std::future::Future<Output = fraisier_store::Result<bool>>>(
    tries: [F; 4],
) -> Vec<bool> {
    let [a, b, c, d] = tries;
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
}

/// The engine looks at locks and freeze windows before it prepares a run, and preparing can
/// take seconds (a source fetched from git). What was committed meanwhile still keeps the run
/// out: the store looks again as it records it, under the environment's hold.
async fn no_run_is_recorded_in_an_environment_locked_or_frozen_against_its_trigger(db: &TestDb) {
    use fraisier_store::Barrier;
    let s = &db.store;
    let barred = |e: StoreError| match e {
        StoreError::Barred(b) => *b,
        e => panic!("not barred: {e}"),
    };
    s.lock_environment(DEFAULT_TENANT, "staging", "bob", Some("incident"))
        .await
        .unwrap()
        .unwrap();
    let refused = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap_err();
    assert!(
        matches!(barred(refused), Barrier::Locked(l) if l.locked_by == "bob"),
        "the lock keeps it out"
    );
    assert_eq!(
        s.barrier(DEFAULT_TENANT, "staging", "alice")
            .await
            .unwrap()
            .map(|b| matches!(b, Barrier::Locked(_))),
        Some(true)
    );
    s.unlock_environment(DEFAULT_TENANT, "staging")
        .await
        .unwrap();

    let window = s
        .add_freeze_window(&fraisier_store::NewFreezeWindow {
            exceptions: vec!["carol".into()],
            ..window_of_an_hour(DEFAULT_TENANT, "staging")
        })
        .await
        .unwrap();
    let refused = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap_err();
    assert!(
        matches!(barred(refused), Barrier::Frozen(w) if w.id == window.id),
        "the window keeps alice out"
    );
    // Its exception is let in; other environments and workspaces are not held by it.
    let carol = NewRun {
        triggered_by: "carol".into(),
        ..new_run(DEFAULT_TENANT, "api", "staging")
    };
    let run = s.create_run(&carol).await.unwrap();
    assert_eq!(run.triggered_by, "carol");
    s.create_run(&new_run(DEFAULT_TENANT, "api", "production"))
        .await
        .unwrap();
    s.create_run(&new_run("tenant-b", "api", "staging"))
        .await
        .unwrap();
    // A window not begun yet holds nothing.
    s.delete_freeze_window(DEFAULT_TENANT, "staging", window.id)
        .await
        .unwrap();
    s.add_freeze_window(&fraisier_store::NewFreezeWindow {
        starts_at: Utc::now() + Duration::hours(1),
        ends_at: Utc::now() + Duration::hours(2),
        ..window_of_an_hour(DEFAULT_TENANT, "staging")
    })
    .await
    .unwrap();
    assert!(s
        .barrier(DEFAULT_TENANT, "staging", "alice")
        .await
        .unwrap()
        .is_none());
}

/// An environment-wide change of variables reconfigures every fraise there with one run
/// each: one refused leaves none made.
async fn runs_made_together_are_all_recorded_or_none(db: &TestDb) {
    let s = &db.store;
    let both = [
        new_run(DEFAULT_TENANT, "api", "staging"),
        new_run(DEFAULT_TENANT, "worker", "staging"),
    ];
    let active = s
        .create_run(&new_run(DEFAULT_TENANT, "worker", "staging"))
        .await
        .unwrap();
    match s.create_runs(&both).await.unwrap_err() {
        StoreError::ActiveRunExists {
            active_id,
            fraise,
            environment,
        } => {
            assert_eq!(active_id, fraisier_store::run_id_string(active.id));
            assert_eq!(
                (fraise.as_str(), environment.as_str()),
                ("worker", "staging")
            );
        }
        e => panic!("expected ActiveRunExists, got {e:?}"),
    }
    let last_of_api = || s.last_run_for(DEFAULT_TENANT, "api", "staging");
    assert_eq!(last_of_api().await.unwrap(), None, "api's run was not kept");

    let mut done = active;
    done.status = RunStatus::Success;
    done.completed_at = Some(Utc::now());
    s.save_run(&done).await.unwrap();
    s.lock_environment(DEFAULT_TENANT, "staging", "bob", None)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        s.create_runs(&both).await.unwrap_err(),
        StoreError::Barred(_)
    ));
    assert_eq!(last_of_api().await.unwrap(), None);

    s.unlock_environment(DEFAULT_TENANT, "staging")
        .await
        .unwrap();
    let made = s.create_runs(&both).await.unwrap();
    let fraises: Vec<&str> = made.iter().map(|r| r.fraise.as_str()).collect();
    assert_eq!(fraises, ["api", "worker"]);
    assert_eq!(last_of_api().await.unwrap().map(|r| r.id), Some(made[0].id));
}

/// Once deleted, an environment takes nothing its deletion drops or counts. A target or group
/// put in it races its deletion, and one of the two wins whole: either the deletion finds the
/// target there and refuses, or the target is refused as the environment is gone — never a
/// deleted environment with something in it. Environments fraisier.yaml declares have no row
/// until deleted, so the row cannot be the lock.
async fn nothing_is_put_in_an_environment_being_deleted(db: &TestDb) {
    use fraisier_model::target::TargetType;
    use fraisier_store::{EnvironmentDeleted, NewTarget, NewTargetGroup, TargetChange};
    let s = &db.store;
    let target = |name: &str, environment: &str| NewTarget {
        workspace: "t1".into(),
        environment: Some(environment.into()),
        name: name.into(),
        kind: TargetType::DockerHost,
        connection: Default::default(),
        labels: Default::default(),
        deployment_directory: None,
        created_by: "ann".into(),
    };
    let group = |environment: &str| NewTargetGroup {
        workspace: "t1".into(),
        environment: environment.into(),
        name: "web".into(),
        description: None,
        labels: Default::default(),
        members: Vec::new(),
        created_by: "ann".into(),
    };
    // Once deleted, it takes nothing: not a target, a group, nor a target moved there.
    s.delete_environment("t1", "gone", "cy").await.unwrap();
    let deleted = |r: Result<(), StoreError>| {
        assert!(
            matches!(&r, Err(StoreError::EnvironmentGone(e)) if e == "gone"),
            "{r:?}"
        )
    };
    deleted(s.create_target(&target("a", "gone")).await.map(drop));
    deleted(s.create_target_group(&group("gone")).await.map(drop));
    // Nor anything else its deletion drops or counts: a lock, a freeze window, limits, its
    // own variables, a run.
    deleted(
        s.lock_environment("t1", "gone", "ann", None)
            .await
            .map(drop),
    );
    deleted(
        s.add_freeze_window(&window_of_an_hour("t1", "gone"))
            .await
            .map(drop),
    );
    deleted(
        s.set_environment_limits("t1", "gone", Some(2), "ann")
            .await
            .map(drop),
    );
    let own = vec![("OWN".to_string(), Some("1".to_string()))];
    deleted(
        s.change_variables("t1", "", "gone", false, &own, "ann")
            .await
            .map(drop),
    );
    deleted(s.create_run(&new_run("t1", "api", "gone")).await.map(drop));
    // A fraise's own variables there are the fraise's (kept for its next deploy).
    s.change_variables("t1", "api", "gone", false, &own, "ann")
        .await
        .unwrap();
    let elsewhere = s.create_target(&target("b", "qa")).await.unwrap();
    let move_to = |e: &str| TargetChange {
        name: None,
        environment: Some(Some(e.to_string())),
        connection: None,
        labels: None,
        deployment_directory: None,
    };
    deleted(
        s.update_target("t1", elsewhere.id, &move_to("gone"))
            .await
            .map(drop),
    );
    assert_eq!(
        s.target_by_ref("t1", "b")
            .await
            .unwrap()
            .environment
            .as_deref(),
        Some("qa")
    );
    // Another workspace's environment of that name is its own.
    s.create_target(&NewTarget {
        workspace: "t2".into(),
        ..target("a", "gone")
    })
    .await
    .unwrap();

    // Both at once, many times over, on environments with no row yet (declared in the file).
    for round in 0..40 {
        let environment = format!("race{round}");
        let name = format!("r{round}");
        let new = target(&name, &environment);
        let (created, deletion) = tokio::join!(
            s.create_target(&new),
            s.delete_environment("t1", &environment, "cy")
        );
        let deletion = deletion.unwrap();
        let record = s.environment_record("t1", &environment).await.unwrap();
        let is_deleted = record.is_some_and(|r| r.deleted_at.is_some());
        match created {
            Ok(_) => {
                assert!(
                    matches!(deletion, EnvironmentDeleted::InUse(_)) && !is_deleted,
                    "round {round}: the target went in, yet the environment was deleted"
                );
            }
            Err(StoreError::EnvironmentGone(_)) => {
                assert_eq!(deletion, EnvironmentDeleted::Done, "round {round}");
                assert!(is_deleted, "round {round}");
                assert!(s.target_by_ref("t1", &name).await.is_err());
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    // A group made, and a target moved in, against the deletion: the same.
    for round in 0..20 {
        let environment = format!("groups{round}");
        let moved = s
            .create_target(&target(&format!("m{round}"), "qa"))
            .await
            .unwrap();
        let (new_group, change) = (group(&environment), move_to(&environment));
        let (made, moved, deletion) = tokio::join!(
            s.create_target_group(&new_group),
            s.update_target("t1", moved.id, &change),
            s.delete_environment("t1", &environment, "cy")
        );
        let is_deleted = s
            .environment_record("t1", &environment)
            .await
            .unwrap()
            .is_some_and(|r| r.deleted_at.is_some());
        let went_in = [made.is_ok(), moved.is_ok()];
        for r in [made.map(drop), moved.map(drop)] {
            assert!(
                matches!(r, Ok(()) | Err(StoreError::EnvironmentGone(_))),
                "round {round}: {r:?}"
            );
        }
        if is_deleted {
            assert_eq!(
                went_in,
                [false, false],
                "round {round}: in a deleted environment"
            );
            assert_eq!(deletion.unwrap(), EnvironmentDeleted::Done);
        } else {
            assert!(went_in.contains(&true), "round {round}: {went_in:?}");
            assert!(matches!(deletion.unwrap(), EnvironmentDeleted::InUse(_)));
        }
    }
}

/// Environments as the API left them: made once (a second create, or one of a name the file
/// declares, finds it there), changed field by field, deleted only when nothing is in them —
/// dropping their lock, freeze windows, limits and own variables, not a fraise's nor another
/// workspace's — and made again afresh, by their new creator.
async fn environments_are_written_deleted_and_made_again(db: &TestDb) {
    use fraisier_model::environment::EnvironmentSettings;
    use fraisier_store::{EnvironmentCreated, EnvironmentDeleted, NewTargetGroup};
    let s = &db.store;
    let approvals = |n| EnvironmentSettings {
        required_approvals: Some(n),
        ..EnvironmentSettings::default()
    };
    let named = EnvironmentSettings {
        display_name: Some("QA".into()),
        ..EnvironmentSettings::default()
    };
    let EnvironmentCreated::Made(made) = s
        .create_environment("t1", "qa", &named, false, "ann")
        .await
        .unwrap()
    else {
        panic!("qa is new");
    };
    assert_eq!((made.created_by.as_str(), made.deleted_at), ("ann", None));
    assert_eq!(
        s.create_environment("t1", "qa", &approvals(1), false, "bob")
            .await
            .unwrap(),
        EnvironmentCreated::Exists
    );
    assert_eq!(
        s.create_environment("t1", "production", &named, true, "bob")
            .await
            .unwrap(),
        EnvironmentCreated::Exists,
        "the file declares it and it was never deleted"
    );
    s.create_environment("t2", "qa", &named, false, "zed")
        .await
        .unwrap();

    // Changes merge field by field, each in its own transaction.
    let changed = s
        .update_environment("t1", "qa", &approvals(2), false, "bob")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.settings.display_name.as_deref(), Some("QA"));
    assert_eq!(changed.settings.required_approvals, Some(2));
    assert_eq!(
        (changed.created_by.as_str(), changed.updated_by.as_str()),
        ("ann", "bob")
    );
    // A declared environment gets its first row from a change; an unknown one none.
    let first = s
        .update_environment("t1", "production", &approvals(3), true, "bob")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.settings, approvals(3));
    assert!(s
        .update_environment("t1", "nowhere", &approvals(3), false, "bob")
        .await
        .unwrap()
        .is_none());

    // Not deleted while a target group is in it.
    let group = s
        .create_target_group(&NewTargetGroup {
            workspace: "t1".into(),
            environment: "qa".into(),
            name: "web".into(),
            description: None,
            labels: Default::default(),
            members: Vec::new(),
            created_by: "ann".into(),
        })
        .await
        .unwrap();
    assert!(matches!(
        s.delete_environment("t1", "qa", "cy").await.unwrap(),
        EnvironmentDeleted::InUse(why) if why.contains("1 target group")
    ));
    s.delete_target_group("t1", group.id).await.unwrap();

    s.lock_environment("t1", "qa", "ann", Some("x"))
        .await
        .unwrap()
        .unwrap();
    s.lock_environment("t2", "qa", "zed", None)
        .await
        .unwrap()
        .unwrap();
    s.add_freeze_window(&window_of_an_hour("t1", "qa"))
        .await
        .unwrap();
    s.set_environment_limits("t1", "qa", Some(4), "ann")
        .await
        .unwrap();
    let set = |n: &str| vec![(n.to_string(), Some("1".to_string()))];
    s.change_variables("t1", "", "qa", false, &set("OWN"), "ann")
        .await
        .unwrap();
    s.change_variables("t1", "api", "qa", false, &set("FRAISE"), "ann")
        .await
        .unwrap();
    assert_eq!(
        s.delete_environment("t1", "qa", "cy").await.unwrap(),
        EnvironmentDeleted::Done
    );
    let gone = s.environment_record("t1", "qa").await.unwrap().unwrap();
    assert!(gone.deleted_at.is_some());
    assert!(gone.settings.is_empty());
    assert!(s.environment_lock("t1", "qa").await.unwrap().is_none());
    assert!(s.freeze_windows("t1", "qa", None).await.unwrap().is_empty());
    assert_eq!(
        s.environment_limits("t1", "qa")
            .await
            .unwrap()
            .max_instances,
        None
    );
    assert!(s.variables("t1", "", "qa").await.unwrap().is_empty());
    assert_eq!(s.variables("t1", "api", "qa").await.unwrap().len(), 1);
    assert!(
        s.environment_lock("t2", "qa").await.unwrap().is_some(),
        "another workspace's stays"
    );
    assert!(s
        .environment_record("t2", "qa")
        .await
        .unwrap()
        .unwrap()
        .deleted_at
        .is_none());
    // Deleted, it is not changed (another server may not have seen the deletion yet).
    assert!(s
        .update_environment("t1", "qa", &approvals(1), true, "bob")
        .await
        .unwrap()
        .is_none());
    // A declared environment with no row is deleted by a row of its own.
    s.delete_environment("t1", "sandbox", "cy").await.unwrap();

    let EnvironmentCreated::Made(again) = s
        .create_environment("t1", "qa", &EnvironmentSettings::default(), false, "dee")
        .await
        .unwrap()
    else {
        panic!("made again");
    };
    assert_eq!((again.created_by.as_str(), again.deleted_at), ("dee", None));
    assert!(again.settings.is_empty(), "afresh: {again:?}");
    let mine: Vec<(String, bool)> = s
        .environment_records_of("t1")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.deleted_at.is_some()))
        .collect();
    assert_eq!(
        mine,
        [
            ("production".into(), false),
            ("qa".into(), false),
            ("sandbox".into(), true)
        ]
    );
    assert_eq!(s.environment_records().await.unwrap().len(), 4);
}

/// Run leases: four servers claim at once and each run goes to exactly one; a run just
/// created is left to its creator; a renewal reports a cancel recorded by anyone and keeps
/// it through the holder's own writes; a lapsed hold is taken over, and the old holder's
/// renewal then fails.
async fn a_run_is_held_by_one_server_and_taken_over_when_the_hold_lapses(db: &TestDb) {
    let s = &db.store;
    let later = Utc::now() + Duration::seconds(30);
    let mut ids = Vec::new();
    for f in ["a", "b", "c", "d", "e", "f"] {
        ids.push(
            s.create_run(&new_run(DEFAULT_TENANT, f, "staging"))
                .await
                .unwrap()
                .id,
        );
    }
    // Just created: left to the server that made it.
    let taken = s
        .claim_runs("s0", later, 50, false, Utc::now() - Duration::seconds(30))
        .await
        .unwrap();
    assert!(taken.is_empty(), "{taken:?}");
    assert!(s.claim_run(ids[0], "creator", later).await.unwrap());
    assert!(
        !s.claim_run(ids[0], "s1", later).await.unwrap(),
        "held by another"
    );
    assert!(
        s.claim_run(ids[0], "creator", later).await.unwrap(),
        "its own hold again"
    );

    // Old enough, unheld: four servers at once, each run to one of them.
    let tasks: Vec<_> = (1..=4)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.claim_runs(
                    &format!("s{i}"),
                    later,
                    50,
                    false,
                    Utc::now() + Duration::seconds(1),
                )
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed.sort();
    assert_eq!(claimed, ids[1..].to_vec(), "each unheld run claimed once");

    // A cancel recorded elsewhere arrives with the renewal, and the holder's write keeps it.
    let run = s.run(DEFAULT_TENANT, ids[0]).await.unwrap();
    assert_eq!(
        s.renew_run_lease(ids[0], "creator", later).await.unwrap(),
        Renewal::Held { cancel: None }
    );
    s.request_cancel(DEFAULT_TENANT, ids[0], "bob")
        .await
        .unwrap();
    s.save_run(&run).await.unwrap();
    assert_eq!(
        s.run(DEFAULT_TENANT, ids[0])
            .await
            .unwrap()
            .cancel_requested_by
            .as_deref(),
        Some("bob"),
        "a progress write never erases a cancel"
    );
    assert_eq!(
        s.renew_run_lease(ids[0], "creator", later).await.unwrap(),
        Renewal::Held {
            cancel: Some("bob".to_string())
        }
    );
    assert_eq!(
        s.renew_run_lease(ids[0], "s1", later).await.unwrap(),
        Renewal::Lost
    );

    // The hold lapses: another server takes it; the old holder's renewal fails.
    let past = Utc::now() - Duration::seconds(1);
    assert!(s.claim_run(ids[0], "creator", past).await.unwrap());
    let taken = s
        .claim_runs("s9", later, 50, false, Utc::now() - Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert_eq!(s.run_lease(ids[0]).await.unwrap().unwrap().0, "s9");
    assert_eq!(
        s.renew_run_lease(ids[0], "creator", later).await.unwrap(),
        Renewal::Lost
    );
    // The one server of an SQLite database takes everything at start.
    let all = s
        .claim_runs(
            "restarted",
            later,
            50,
            true,
            Utc::now() - Duration::seconds(30),
        )
        .await
        .unwrap();
    assert_eq!(all.len(), ids.len());
    // A server that lost a run writes it no more; the one holding it does.
    s.hold_runs_as("creator");
    let mut lost = s.run(DEFAULT_TENANT, ids[0]).await.unwrap();
    lost.progress = 99;
    assert!(matches!(s.save_run(&lost).await, Err(StoreError::NotFound)));
    assert_ne!(s.run(DEFAULT_TENANT, ids[0]).await.unwrap().progress, 99);
    // Finished while held: the renewal says so rather than "lost".
    let mut done = s.run(DEFAULT_TENANT, ids[1]).await.unwrap();
    assert!(s.claim_run(ids[1], "creator", later).await.is_ok());
    s.claim_runs("creator", later, 50, true, Utc::now())
        .await
        .unwrap();
    done.status = RunStatus::Success;
    s.save_run(&done).await.unwrap();
    assert_eq!(
        s.renew_run_lease(ids[1], "creator", later).await.unwrap(),
        Renewal::Finished
    );

    // A run ends with its last event in one write, or not at all: a server that lost the run
    // records neither, so the holder's end is the only one told.
    let mut elsewhere = s
        .create_run(&new_run(DEFAULT_TENANT, "h", "staging"))
        .await
        .unwrap();
    assert!(s.claim_run(elsewhere.id, "another", later).await.unwrap());
    elsewhere.status = RunStatus::Failed;
    let refused = s
        .end_run(&elsewhere, RunColumns::END, "deployment.failed", &json!({}))
        .await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    assert!(s.events(elsewhere.id, None).await.unwrap().is_empty());
    let read = s.run(DEFAULT_TENANT, elsewhere.id).await.unwrap();
    assert_eq!((read.status, read.events_count), (RunStatus::Pending, 0));
    let mut held = s
        .create_run(&new_run(DEFAULT_TENANT, "g", "staging"))
        .await
        .unwrap();
    assert!(s.claim_run(held.id, "creator", later).await.unwrap());
    held.status = RunStatus::Success;
    held.completed_at = Some(Utc::now());
    let event = s
        .end_run(
            &held,
            RunColumns::END,
            "deployment.completed",
            &json!({"version": "1.2.0"}),
        )
        .await
        .unwrap();
    let read = s.run(DEFAULT_TENANT, held.id).await.unwrap();
    assert_eq!((read.status, read.events_count), (RunStatus::Success, 1));
    let events = s.events(held.id, None).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].id, events[0].event_type.as_str()),
        (event.id, "deployment.completed")
    );

    // A note on a run another server finished, its lease still on the row (a rollback
    // undid its migrations): written, where the executor's guarded write is refused.
    let other = Store::open(&db.url).await.unwrap();
    other.hold_runs_as("another");
    let mut theirs = other
        .create_run(&new_run(DEFAULT_TENANT, "i", "staging"))
        .await
        .unwrap();
    assert!(other.claim_run(theirs.id, "another", later).await.unwrap());
    theirs.status = RunStatus::Success;
    theirs.completed_at = Some(Utc::now());
    other
        .end_run(&theirs, RunColumns::END, "deployment.completed", &json!({}))
        .await
        .unwrap();
    theirs.options = json!({"migration": {"reverted": true}});
    assert!(matches!(
        s.write_run(&theirs, RunColumns::OPTIONS).await,
        Err(StoreError::NotFound)
    ));
    s.write_finished_run_options(&theirs).await.unwrap();
    let read = s.run(DEFAULT_TENANT, theirs.id).await.unwrap();
    assert_eq!(
        (read.status, read.options),
        (RunStatus::Success, theirs.options)
    );
    // An active run's options are its executor's alone.
    elsewhere.options = json!({"note": 1});
    assert!(matches!(
        s.write_finished_run_options(&elsewhere).await,
        Err(StoreError::NotFound)
    ));
    other.close().await;
}

/// Described targets and target groups: names unique per workspace (and per environment for
/// groups), members kept in order and forgotten with their target, a change touches only the
/// fields it names, and another workspace sees nothing.
async fn targets_and_groups_keep_members_and_change_per_field(db: &TestDb) {
    use fraisier_model::agent::Labels;
    use fraisier_model::target::TargetType;
    use fraisier_store::{NewTarget, NewTargetGroup, TargetChange, TargetGroupChange};
    let labels = |k: &str, v: &str| Labels::from([(k.to_string(), v.to_string())]);
    let new = NewTarget {
        workspace: DEFAULT_TENANT.into(),
        environment: Some("production".into()),
        name: "prod-web-01".into(),
        kind: TargetType::DockerHost,
        connection: json!({"host": "10.0.0.5", "port": 2375})
            .as_object()
            .unwrap()
            .clone(),
        labels: labels("role", "web"),
        deployment_directory: Some("/opt/deployments".into()),
        created_by: "admin".into(),
    };
    let t = db.store.create_target(&new).await.unwrap();
    assert_eq!(t.kind, TargetType::DockerHost);
    assert!(matches!(
        db.store.create_target(&new).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let other_ws = NewTarget {
        workspace: "acme".into(),
        ..new.clone()
    };
    db.store.create_target(&other_ws).await.unwrap();

    let g = db
        .store
        .create_target_group(&NewTargetGroup {
            workspace: DEFAULT_TENANT.into(),
            environment: "production".into(),
            name: "web".into(),
            description: Some("the web tier".into()),
            labels: Labels::new(),
            members: vec!["agt_1".into(), t.reference()],
            created_by: "admin".into(),
        })
        .await
        .unwrap();
    assert_eq!(g.members, vec!["agt_1".to_string(), t.reference()]);
    let same = NewTargetGroup {
        workspace: DEFAULT_TENANT.into(),
        environment: "production".into(),
        name: "web".into(),
        description: None,
        labels: Labels::new(),
        members: vec![],
        created_by: "admin".into(),
    };
    assert!(matches!(
        db.store.create_target_group(&same).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let staging = NewTargetGroup {
        environment: "staging".into(),
        ..same
    };
    db.store.create_target_group(&staging).await.unwrap();
    assert_eq!(
        db.store
            .target_groups(DEFAULT_TENANT, Some("production"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        db.store
            .target_groups(DEFAULT_TENANT, None)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(db
        .store
        .target_groups("acme", None)
        .await
        .unwrap()
        .is_empty());
    let named = db
        .store
        .target_group_named(DEFAULT_TENANT, "production", "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(named.members, g.members);

    // Per field: a change to the description leaves labels and members alone.
    let g2 = db
        .store
        .update_target_group(
            DEFAULT_TENANT,
            g.id,
            &TargetGroupChange {
                description: Some(None),
                ..TargetGroupChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((g2.description, g2.members.len()), (None, 2));
    let g3 = db
        .store
        .update_target_group(
            DEFAULT_TENANT,
            g.id,
            &TargetGroupChange {
                labels: Some(labels("role", "web")),
                members: Some(vec![t.reference()]),
                ..TargetGroupChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (g3.labels, g3.members),
        (labels("role", "web"), vec![t.reference()])
    );
    let t2 = db
        .store
        .update_target(
            DEFAULT_TENANT,
            t.id,
            &TargetChange {
                environment: Some(None),
                deployment_directory: Some(None),
                ..TargetChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (t2.environment, t2.deployment_directory, t2.connection),
        (None, None, t.connection.clone())
    );
    assert_eq!(
        db.store
            .target_by_ref(DEFAULT_TENANT, "prod-web-01")
            .await
            .unwrap()
            .id,
        t.id
    );

    // Memberships set from the target's side, and forgotten with it.
    db.store
        .set_target_groups(DEFAULT_TENANT, "agt_1", &[g.id])
        .await
        .unwrap();
    assert_eq!(
        db.store
            .target_group(DEFAULT_TENANT, g.id)
            .await
            .unwrap()
            .members,
        vec![t.reference(), "agt_1".to_string()]
    );
    assert!(db.store.delete_target(DEFAULT_TENANT, t.id).await.unwrap());
    assert!(!db.store.delete_target(DEFAULT_TENANT, t.id).await.unwrap());
    assert_eq!(
        db.store
            .target_group(DEFAULT_TENANT, g.id)
            .await
            .unwrap()
            .members,
        vec!["agt_1".to_string()]
    );
    assert!(db
        .store
        .delete_target_group(DEFAULT_TENANT, g.id)
        .await
        .unwrap());
    assert!(matches!(
        db.store.target_group(DEFAULT_TENANT, g.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(db.store.targets("acme").await.unwrap().len(), 1);
}

/// Eight agents present a token of two uses at once: two join, the others are refused; a
/// heartbeat writes only what the agent reports; a revoked credential opens nothing.
async fn a_join_token_admits_as_many_agents_as_it_has_uses(db: &TestDb) {
    use fraisier_model::agent::{Heartbeat, Labels};
    use fraisier_store::{NewAgent, NewJoinToken, Refusal};
    let local = db
        .store
        .ensure_local_agent("local-digest", &Heartbeat::default())
        .await
        .unwrap();
    assert!(local.is_local() && local.last_heartbeat_at.is_none());
    let again = db
        .store
        .ensure_local_agent("new-digest", &Heartbeat::default())
        .await
        .unwrap();
    assert_eq!(again.id, local.id, "the local agent is recorded once");
    assert!(db
        .store
        .agent_by_credential("local-digest")
        .await
        .unwrap()
        .is_none());
    db.store
        .create_join_token(&NewJoinToken {
            workspace: DEFAULT_TENANT.into(),
            token_hash: "token-digest".into(),
            uses: 2,
            expires_at: Utc::now() + Duration::hours(1),
            created_by: "admin".into(),
        })
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = db.store.clone();
            tokio::spawn(async move {
                s.register_agent(
                    "token-digest",
                    &NewAgent {
                        name: format!("web-{i}"),
                        labels: Labels::new(),
                        credential_hash: format!("credential-{i}"),
                        heartbeat: Heartbeat::default(),
                    },
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut joined = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => joined.push(a),
            Err(r) => assert_eq!(r, Refusal::InvalidJoinToken),
        }
    }
    assert_eq!(joined.len(), 2, "{joined:?}");
    let agents = db.store.agents("other").await.unwrap();
    assert_eq!(
        agents.len(),
        1,
        "another workspace sees only the local agent"
    );
    assert_eq!(db.store.agents(DEFAULT_TENANT).await.unwrap().len(), 3);

    let a = &joined[0];
    db.store
        .update_agent(
            a.id,
            Some(&Labels::from([("role".into(), "web".into())])),
            Some(true),
        )
        .await
        .unwrap();
    let beat = Heartbeat {
        version: "2.0.0".into(),
        services: 3,
        ..Heartbeat::default()
    };
    let after = db.store.record_heartbeat(a.id, &beat).await.unwrap();
    assert!(after.draining, "a heartbeat does not undo a drain");
    assert_eq!(after.labels.get("role").map(String::as_str), Some("web"));
    assert_eq!((after.version.as_str(), after.services), ("2.0.0", 3));
    assert!(after.last_heartbeat_at >= a.last_heartbeat_at);

    let credential = format!("credential-{}", a.name.trim_start_matches("web-"));
    assert!(db
        .store
        .agent_by_credential(&credential)
        .await
        .unwrap()
        .is_some());
    assert!(db.store.revoke_agent(a.id, "admin").await.unwrap());
    assert!(!db.store.revoke_agent(a.id, "admin").await.unwrap());
    assert!(db
        .store
        .agent_by_credential(&credential)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        db.store.record_heartbeat(a.id, &beat).await,
        Err(StoreError::NotFound)
    ));
}

async fn variables_change_all_or_nothing_and_restore(db: &TestDb) {
    let s = &db.store;
    let set = |n: &str, v: Option<&str>| (n.to_string(), v.map(str::to_string));
    let changed = s
        .change_variables(
            "t1",
            "api",
            "production",
            false,
            &[set("A", Some("1")), set("B", Some("2"))],
            "ann",
        )
        .await
        .unwrap();
    assert_eq!(changed, ["A", "B"]);
    // The same value is no change; removing an absent name neither.
    let changed = s
        .change_variables(
            "t1",
            "api",
            "production",
            false,
            &[set("A", Some("1")), set("Z", None)],
            "ann",
        )
        .await
        .unwrap();
    assert!(changed.is_empty());
    let before = s.variables("t1", "api", "production").await.unwrap();
    // A secret may not take a plain variable's name: nothing of the batch is written.
    let err = s
        .change_variables(
            "t1",
            "api",
            "production",
            true,
            &[set("C", Some("{}")), set("A", Some("{}"))],
            "bob",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(ref n) if n == "A"),
        "{err:?}"
    );
    assert_eq!(
        s.variables("t1", "api", "production").await.unwrap(),
        before
    );
    // Scoped: another workspace, fraise or environment sees none of them.
    assert!(s
        .variables("t2", "api", "production")
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .variables("t1", "api", "staging")
        .await
        .unwrap()
        .is_empty());
    s.change_variables(
        "t1",
        "api",
        "production",
        false,
        &[set("A", Some("9")), set("B", None), set("N", Some("new"))],
        "bob",
    )
    .await
    .unwrap();
    let prior: Vec<_> = ["A", "B", "N"]
        .iter()
        .map(|n| (n.to_string(), before.iter().find(|v| v.name == *n).cloned()))
        .collect();
    s.restore_variables("t1", "api", "production", &prior)
        .await
        .unwrap();
    assert_eq!(
        s.variables("t1", "api", "production").await.unwrap(),
        before
    );
    // Re-sealing touches secrets only.
    s.change_variables(
        "t1",
        "api",
        "production",
        true,
        &[set("S", Some("sealed-1"))],
        "ann",
    )
    .await
    .unwrap();
    let mut slots = s.secret_slots().await.unwrap();
    assert_eq!(slots.len(), 1);
    slots[0].value = "sealed-2".into();
    s.reseal(&slots).await.unwrap();
    let now = s.variables("t1", "api", "production").await.unwrap();
    assert_eq!(
        now.iter().find(|v| v.name == "S").unwrap().value,
        "sealed-2"
    );
    assert_eq!(now.iter().find(|v| v.name == "A").unwrap().value, "1");
}

async fn artifact_versions_are_immutable_and_scoped(db: &TestDb) {
    use fraisier_store::{ArtifactFilter, NewArtifactVersion, VersionConflict};
    let s = &db.store;
    let new =
        |tenant: &str, name: &str, kind: &str, version: &str, digest: &str| NewArtifactVersion {
            tenant_id: tenant.into(),
            name: name.into(),
            kind: kind.into(),
            description: Some("the api".into()),
            tags: vec!["web".into()],
            version: version.into(),
            digest: digest.into(),
            size: 10,
            format: "tar.gz".into(),
            metadata: json!({"commit": "abc"}),
            created_by: "ann".into(),
        };
    let (v, created) = s
        .add_artifact_version(&new("t1", "api", "api", "1.0.0", "sha256:aa"))
        .await
        .unwrap()
        .unwrap();
    assert!(created);
    assert_eq!((v.version.as_str(), v.size), ("1.0.0", 10));
    // Again with the same bytes: no change. Other bytes, or another type: refused.
    let (_, created) = s
        .add_artifact_version(&new("t1", "api", "api", "1.0.0", "sha256:aa"))
        .await
        .unwrap()
        .unwrap();
    assert!(!created);
    assert_eq!(
        s.add_artifact_version(&new("t1", "api", "api", "1.0.0", "sha256:bb"))
            .await
            .unwrap(),
        Err(VersionConflict::Digest {
            existing: "sha256:aa".into()
        })
    );
    assert_eq!(
        s.add_artifact_version(&new("t1", "api", "model", "2.0.0", "sha256:bb"))
            .await
            .unwrap(),
        Err(VersionConflict::Kind {
            existing: "api".into()
        })
    );
    s.add_artifact_version(&new("t1", "api", "api", "1.1.0", "sha256:bb"))
        .await
        .unwrap()
        .unwrap();
    s.add_artifact_version(&new("t1", "churn", "model", "1", "sha256:aa"))
        .await
        .unwrap()
        .unwrap();
    s.add_artifact_version(&new("t2", "api", "api", "9.0.0", "sha256:cc"))
        .await
        .unwrap()
        .unwrap();

    let a = s.artifact("t1", "api").await.unwrap();
    assert_eq!(
        (a.versions, a.size, a.latest.as_deref()),
        (2, 20, Some("1.1.0"))
    );
    assert_eq!(a.tags, ["web"]);
    let (list, total) = s
        .artifacts(
            "t1",
            &ArtifactFilter {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((list.len(), total), (2, 2));
    let (models, _) = s
        .artifacts(
            "t1",
            &ArtifactFilter {
                kind: Some("model".into()),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        models.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["churn"]
    );
    let (found, _) = s
        .artifacts(
            "t1",
            &ArtifactFilter {
                q: Some("CHU".into()),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let versions = s.artifact_versions("t1", "api").await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["1.1.0", "1.0.0"]
    );
    assert!(matches!(
        s.artifact("t2", "churn").await,
        Err(StoreError::NotFound)
    ));

    s.delete_artifact_version("t1", "api", "1.0.0")
        .await
        .unwrap();
    assert!(
        s.blob_referenced("sha256:aa").await.unwrap(),
        "churn still names it"
    );
    let gone = s.delete_artifact("t1", "churn").await.unwrap();
    assert_eq!(gone.len(), 1);
    assert!(!s.blob_referenced("sha256:aa").await.unwrap());
    assert!(matches!(
        s.artifact_version("t1", "api", "1.0.0").await,
        Err(StoreError::NotFound)
    ));

    // Notes appended at once to a version's metadata all land, beside what it had.
    let appends: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.append_version_metadata("t1", "api", "1.1.0", "promotions", &json!({ "n": i }))
                    .await
            })
        })
        .collect();
    for a in appends {
        a.await.unwrap().unwrap();
    }
    let v = s.artifact_version("t1", "api", "1.1.0").await.unwrap();
    let mut ns: Vec<i64> = v.metadata["promotions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..8).collect::<Vec<_>>(), "{}", v.metadata);
    assert_eq!(v.metadata["commit"], "abc");
    assert!(matches!(
        s.append_version_metadata("t1", "api", "9.9.9", "promotions", &json!({}))
            .await,
        Err(StoreError::NotFound)
    ));
}

/// A fresh database; dropping it removes it (a PostgreSQL database too, even after a panic).
struct TestDb {
    store: Store,
    url: String,
    _dir: Option<TempDir>,
    _pg: Option<PgDatabase>,
}

struct PgDatabase {
    admin_url: String,
    name: String,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_in(dir.path()).await.unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fraisier.db").display()
        );
        TestDb {
            store,
            url,
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var(PG_URL_VAR).ok().filter(|u| !u.is_empty())?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("fraisier_t_{:016x}", RandomState::new().hash_one(nanos));
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await.unwrap();
        // From here on the guard drops the database whatever happens.
        let pg = PgDatabase {
            admin_url: admin_url.clone(),
            name: name.clone(),
        };
        let url = with_database(&admin_url, &name);
        let store = Store::open(&url).await.unwrap();
        Some(TestDb {
            store,
            url,
            _dir: None,
            _pg: Some(pg),
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await, and the test's runtime may be unwinding: use a runtime of our own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                admin.execute(sql.as_str()).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// The same server and credentials, another database.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}/{name}{query}")
}

#[tokio::test]
async fn postgres_test_database_is_dropped_even_when_a_test_panics() {
    let Ok(admin_url) = std::env::var(PG_URL_VAR) else {
        println!("skipped: {PG_URL_VAR} is not set");
        return;
    };
    let name = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = name.clone();
    let failed = tokio::spawn(async move {
        let db = TestDb::postgres().await.unwrap();
        *seen.lock().unwrap() = db._pg.as_ref().map(|pg| pg.name.clone());
        panic!("a failing test");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let name = name
        .lock()
        .unwrap()
        .clone()
        .expect("the database was created");
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} should have been dropped");
}

#[tokio::test]
async fn sqlite_creates_a_missing_file_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let store = Store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "sqlite");
    store
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    assert!(path.exists());
    assert!(
        dir.path().join("fresh.db-wal").exists(),
        "journal_mode is WAL"
    );
    store.close().await;
}

/// A database written by the first schema (users with one tenant and their roles on the row)
/// keeps its users, now members of that workspace with the same roles.
#[tokio::test]
async fn upgrading_keeps_the_users_of_the_first_schema() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("old.db").display());
    sqlx::any::install_default_drivers();
    let mut raw = sqlx::AnyConnection::connect(&url).await.unwrap();
    for st in [
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        "INSERT INTO schema_migrations VALUES (1, 'initial', 0)",
        "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, username TEXT NOT NULL, password_hash TEXT NOT NULL, roles TEXT NOT NULL, created_at BIGINT NOT NULL)",
        "CREATE UNIQUE INDEX users_tenant_username ON users (tenant_id, username)",
        "INSERT INTO users (tenant_id, username, password_hash, roles, created_at) VALUES ('default', 'admin', '$argon2id$x', '[\"admin\"]', 1700000000000)",
        // The first schema's runs and events, as far as later migrations touch them.
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL)",
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT)",
    ] {
        sqlx::query(st).execute(&mut raw).await.unwrap();
    }
    raw.close().await.unwrap();
    let store = Store::open(&url).await.unwrap();
    let admin = store.member(DEFAULT_TENANT, "admin").await.unwrap();
    assert_eq!(admin.roles, vec!["admin".to_string()]);
    assert_eq!(admin.user.password_hash, "$argon2id$x");
    assert!(!admin.user.disabled);
    assert_eq!(admin.user.updated_at, admin.user.created_at);
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_keeps_one_database() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let run = store
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.run(DEFAULT_TENANT, run.id).await })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap().id, run.id);
    }
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_their_password() {
    let err = Store::open("mysql://root:hunter2@db/fraisier")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"));
}

// --- fixtures ---

/// A freeze window from now for an hour, by ann.
fn window_of_an_hour(tenant: &str, environment: &str) -> fraisier_store::NewFreezeWindow {
    fraisier_store::NewFreezeWindow {
        tenant_id: tenant.into(),
        environment: environment.into(),
        starts_at: Utc::now(),
        ends_at: Utc::now() + Duration::hours(1),
        reason: None,
        exceptions: Vec::new(),
        created_by: "ann".into(),
    }
}

fn new_run(tenant: &str, fraise: &str, environment: &str) -> NewRun {
    NewRun {
        tenant_id: tenant.to_string(),
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        kind: RunKind::Deploy,
        version: "1.2.0".to_string(),
        previous_version: Some("1.1.0".to_string()),
        strategy: "rolling".to_string(),
        strategy_config: json!({"max_instances_down": 1, "max_surge": 1}),
        triggered_by: "alice".to_string(),
        trigger_type: "api".to_string(),
        options: json!({"wait": false, "reason": "test"}),
        metadata: json!({"ticket": "OPS-1"}),
    }
}

fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_704_067_200_000).unwrap()
}

/// A run as the benchmark would import it, created `minutes` after the base time.
fn imported(id: i64, fraise: &str, environment: &str, status: RunStatus, minutes: i64) -> Run {
    let created_at = base_time() + Duration::minutes(minutes);
    let finished = status
        .is_final()
        .then(|| created_at + Duration::seconds(30));
    Run {
        id,
        tenant_id: DEFAULT_TENANT.to_string(),
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        kind: RunKind::Deploy,
        status,
        version: format!("1.0.{id}"),
        previous_version: None,
        strategy: "rolling".to_string(),
        strategy_config: json!({}),
        triggered_by: if id % 2 == 0 { "Bob" } else { "alice" }.to_string(),
        trigger_type: "api".to_string(),
        options: json!({}),
        metadata: json!({}),
        created_at,
        // Updated in the reverse order of creation, so the two sorts differ.
        updated_at: base_time() + Duration::minutes(10_000 - minutes),
        started_at: Some(created_at),
        completed_at: finished,
        health_check_status: fraisier_model::run::HealthCheckStatus::Unknown,
        health_details: json!({}),
        metrics: json!({}),
        error_code: None,
        error_message: None,
        cancel_requested_by: None,
        cancelled_at: None,
        progress: -1,
        events_count: 0,
        log_lines: 0,
    }
}

fn ids(runs: &[Run]) -> Vec<i64> {
    runs.iter().map(|r| r.id).collect()
}

async fn list(store: &Store, f: RunFilter) -> (Vec<i64>, u64) {
    let (runs, total) = store.list_runs(DEFAULT_TENANT, &f).await.unwrap();
    (ids(&runs), total)
}

fn active_id_of(err: StoreError) -> String {
    match err {
        StoreError::ActiveRunExists { active_id, .. } => active_id,
        other => panic!("expected ActiveRunExists, got {other:?}"),
    }
}

// --- the suite ---

async fn migrations_are_idempotent(db: &TestDb) {
    let run = db
        .store
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    for _ in 0..2 {
        let again = Store::open(&db.url).await.unwrap();
        assert_eq!(again.backend(), db.store.backend());
        assert_eq!(again.run(DEFAULT_TENANT, run.id).await.unwrap(), run);
        again.close().await;
    }
}

async fn create_and_get_run(db: &TestDb) {
    let s = &db.store;
    assert!(s.ping().await.unwrap() < std::time::Duration::from_secs(5));
    let (_, max) = s.pool_size();
    assert!(max > 0);
    assert!(!format!("{s:?}").contains("password"));

    let new = new_run(DEFAULT_TENANT, "api", "staging");
    let run = s.create_run(&new).await.unwrap();
    assert_eq!(run.id, 1);
    assert_eq!(run_id_string(run.id), "dep_00001");
    assert_eq!(parse_run_id("dep_00001"), Some(1));
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.progress, -1);
    assert_eq!(run.created_at, run.updated_at);
    assert_eq!((run.started_at, run.completed_at), (None, None));
    assert_eq!(
        run.health_check_status,
        fraisier_model::run::HealthCheckStatus::Unknown
    );
    assert_eq!((run.events_count, run.log_lines), (0, 0));
    assert_eq!(run.strategy_config, new.strategy_config);
    assert_eq!(run.options, new.options);
    assert_eq!(run.metadata, new.metadata);
    assert_eq!(run.previous_version.as_deref(), Some("1.1.0"));
    assert_eq!(s.run(DEFAULT_TENANT, run.id).await.unwrap(), run);
    assert!(matches!(
        s.run(DEFAULT_TENANT, 999).await,
        Err(StoreError::NotFound)
    ));

    let second = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "production"))
        .await
        .unwrap();
    assert_eq!(run_id_string(second.id), "dep_00002");
}

async fn one_active_run_per_fraise_and_environment(db: &TestDb) {
    let s = &db.store;
    let first = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let refused = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap_err();
    assert_eq!(active_id_of(refused), run_id_string(first.id));

    // Other environments, fraises and tenants have slots of their own.
    s.create_run(&new_run(DEFAULT_TENANT, "api", "production"))
        .await
        .unwrap();
    s.create_run(&new_run(DEFAULT_TENANT, "worker", "staging"))
        .await
        .unwrap();
    s.create_run(&new_run("other", "api", "staging"))
        .await
        .unwrap();

    // In progress holds the slot as pending does.
    let mut running = first.clone();
    running.status = RunStatus::InProgress;
    s.save_run(&running).await.unwrap();
    let refused = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap_err();
    assert_eq!(active_id_of(refused), run_id_string(first.id));
    let active = s
        .active_run_for(DEFAULT_TENANT, "api", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.id, first.id);
    assert_eq!(s.active_runs().await.unwrap().len(), 4);
}

async fn concurrent_creates_let_exactly_one_win(db: &TestDb) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = db.store.clone();
            tokio::spawn(async move {
                s.create_run(&new_run(DEFAULT_TENANT, "api", "production"))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut named = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(run) => winners.push(run),
            Err(e) => named.push(active_id_of(e)),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create_run succeeds");
    assert_eq!(named.len(), 7);
    let winner = run_id_string(winners[0].id);
    assert!(
        named.iter().all(|id| *id == winner),
        "{named:?} should all name {winner}"
    );
}

/// The totals of listings may be remembered between requests (SQLite); a create, a status
/// change or an import must show in the very next listing.
async fn list_runs_totals_follow_every_write(db: &TestDb) {
    let s = &db.store;
    let in_progress = || RunFilter {
        status: Some(RunStatus::Pending),
        ..RunFilter::default()
    };
    assert_eq!(list(s, RunFilter::default()).await.1, 0);
    assert_eq!(list(s, in_progress()).await.1, 0);

    let mut run = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    assert_eq!(list(s, RunFilter::default()).await.1, 1);
    assert_eq!(list(s, in_progress()).await.1, 1);

    run.status = RunStatus::Success;
    s.save_run(&run).await.unwrap();
    assert_eq!(list(s, in_progress()).await.1, 0);
    assert_eq!(list(s, RunFilter::default()).await.1, 1);

    let mut imported = run.clone();
    imported.id = run.id + 100;
    s.import_runs(&[imported]).await.unwrap();
    assert_eq!(
        list(s, RunFilter::default()).await,
        (vec![run.id + 100, run.id], 2)
    );
}

async fn finishing_a_run_frees_the_slot(db: &TestDb) {
    let s = &db.store;
    let mut first = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    first.status = RunStatus::Success;
    first.completed_at = Some(Utc::now());
    s.save_run(&first).await.unwrap();
    assert!(s
        .active_run_for(DEFAULT_TENANT, "api", "staging")
        .await
        .unwrap()
        .is_none());

    let second = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    assert!(second.id > first.id);
    let last = s
        .last_run_for(DEFAULT_TENANT, "api", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.id, second.id);
    assert!(s
        .last_run_for(DEFAULT_TENANT, "api", "nowhere")
        .await
        .unwrap()
        .is_none());
    // The next run after one, whatever its status; none after the last, none elsewhere.
    let next = |after| s.next_run_after(DEFAULT_TENANT, "api", "staging", after);
    assert_eq!(next(0).await.unwrap().map(|r| r.id), Some(first.id));
    assert_eq!(next(first.id).await.unwrap().map(|r| r.id), Some(second.id));
    assert_eq!(next(second.id).await.unwrap(), None);
    assert_eq!(
        s.next_run_after("tenant-b", "api", "staging", 0)
            .await
            .unwrap(),
        None
    );

    // Reviving a finished run while another holds the slot is refused.
    first.status = RunStatus::InProgress;
    let refused = s.save_run(&first).await.unwrap_err();
    assert_eq!(active_id_of(refused), run_id_string(second.id));
    assert_eq!(
        s.run(DEFAULT_TENANT, first.id).await.unwrap().status,
        RunStatus::Success
    );
}

async fn save_run_writes_every_mutable_field(db: &TestDb) {
    let s = &db.store;
    let created = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let at = |secs: i64| DateTime::from_timestamp_millis(1_704_067_200_000 + secs * 1000).unwrap();
    let mut run = created.clone();
    run.status = RunStatus::Failed;
    run.version = "1.3.0".to_string();
    run.previous_version = None;
    run.started_at = Some(at(1));
    run.completed_at = Some(at(61));
    run.health_check_status = fraisier_model::run::HealthCheckStatus::Failing;
    run.health_details = json!({"checks_passed": 1, "checks_total": 3});
    run.metrics = json!({"error_rate": 12.5});
    run.error_code = Some("HEALTH_CHECK_FAILED".to_string());
    run.error_message = Some("3 of 3 checks failed".to_string());
    run.cancel_requested_by = Some("bob".to_string());
    run.cancelled_at = Some(at(30));
    run.progress = 4;
    run.options = json!({"wait": true});
    s.save_run(&run).await.unwrap();

    let read = s.run(DEFAULT_TENANT, run.id).await.unwrap();
    assert!(read.updated_at >= created.updated_at);
    run.updated_at = read.updated_at;
    assert_eq!(read, run);

    let mut ghost = run.clone();
    ghost.id = 4242;
    assert!(matches!(
        s.save_run(&ghost).await,
        Err(StoreError::NotFound)
    ));
}

async fn a_write_of_some_columns_leaves_the_others_as_another_server_left_them(db: &TestDb) {
    let s = &db.store;
    let created = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    // This server's copy, taken before another server cancelled the run and rewrote its
    // options.
    let mut mine = created.clone();
    s.request_cancel(DEFAULT_TENANT, created.id, "bob")
        .await
        .unwrap();
    let mut theirs = s.run(DEFAULT_TENANT, created.id).await.unwrap();
    theirs.options = json!({"theirs": true});
    s.write_run(&theirs, RunColumns::OPTIONS).await.unwrap();

    mine.progress = 3;
    mine.status = RunStatus::InProgress;
    mine.options = json!({"mine": true});
    s.write_run(&mine, RunColumns::PROGRESS).await.unwrap();
    let read = s.run(DEFAULT_TENANT, created.id).await.unwrap();
    assert_eq!(read.progress, 3);
    assert_eq!(
        read.status,
        RunStatus::Pending,
        "status is not a progress column"
    );
    assert_eq!(read.options, json!({"theirs": true}));
    assert_eq!(read.cancel_requested_by.as_deref(), Some("bob"));

    // Even a write of the status keeps a cancel recorded by someone else.
    s.write_run(&mine, RunColumns::STATUS).await.unwrap();
    let read = s.run(DEFAULT_TENANT, created.id).await.unwrap();
    assert_eq!(read.status, RunStatus::InProgress);
    assert_eq!(read.cancel_requested_by.as_deref(), Some("bob"));
    assert_eq!(read.options, json!({"theirs": true}));
}

async fn request_cancel_records_the_first_asker(db: &TestDb) {
    let s = &db.store;
    let run = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let asked = s
        .request_cancel(DEFAULT_TENANT, run.id, "bob")
        .await
        .unwrap();
    assert_eq!(asked.cancel_requested_by.as_deref(), Some("bob"));
    let again = s
        .request_cancel(DEFAULT_TENANT, run.id, "carol")
        .await
        .unwrap();
    assert_eq!(again.cancel_requested_by.as_deref(), Some("bob"));

    // A finished run is returned unchanged.
    let mut done = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "production"))
        .await
        .unwrap();
    done.status = RunStatus::Success;
    s.save_run(&done).await.unwrap();
    let after = s
        .request_cancel(DEFAULT_TENANT, done.id, "bob")
        .await
        .unwrap();
    assert_eq!(after.cancel_requested_by, None);
    assert!(matches!(
        s.request_cancel(DEFAULT_TENANT, 999, "bob").await,
        Err(StoreError::NotFound)
    ));
}

/// 1 api/staging success · 2 api/production failed · 3 worker/staging success ·
/// 4 api/staging cancelled · 5 worker/production in_progress · 6 api/staging pending;
/// created 10 minutes apart; even ids triggered by "Bob".
async fn seed_six(s: &Store) {
    let runs = [
        imported(1, "api", "staging", RunStatus::Success, 0),
        imported(2, "api", "production", RunStatus::Failed, 10),
        imported(3, "worker", "staging", RunStatus::Success, 20),
        imported(4, "api", "staging", RunStatus::Cancelled, 30),
        imported(5, "worker", "production", RunStatus::InProgress, 40),
        imported(6, "api", "staging", RunStatus::Pending, 50),
    ];
    s.import_runs(&runs).await.unwrap();
}

async fn list_runs_filters(db: &TestDb) {
    let s = &db.store;
    seed_six(s).await;
    let f = RunFilter::default;
    let minutes = |m| Some(base_time() + Duration::minutes(m));

    assert_eq!(list(s, f()).await, (vec![6, 5, 4, 3, 2, 1], 6));
    let fraise = RunFilter {
        fraise: Some("api".into()),
        ..f()
    };
    assert_eq!(list(s, fraise).await, (vec![6, 4, 2, 1], 4));
    let project = RunFilter {
        fraises: Some(vec!["api".into(), "nothing".into()]),
        ..f()
    };
    assert_eq!(list(s, project).await, (vec![6, 4, 2, 1], 4));
    let empty_project = RunFilter {
        fraises: Some(vec![]),
        ..f()
    };
    assert_eq!(list(s, empty_project).await, (vec![], 0));
    let environment = RunFilter {
        environment: Some("production".into()),
        ..f()
    };
    assert_eq!(list(s, environment).await, (vec![5, 2], 2));
    let status = RunFilter {
        status: Some(RunStatus::Success),
        ..f()
    };
    assert_eq!(list(s, status).await, (vec![3, 1], 2));
    let both = RunFilter {
        fraise: Some("api".into()),
        environment: Some("staging".into()),
        ..f()
    };
    assert_eq!(list(s, both).await, (vec![6, 4, 1], 3));

    let q = |text: &str| RunFilter {
        q: Some(text.to_string()),
        ..f()
    };
    assert_eq!(
        list(s, q("BOB")).await,
        (vec![6, 4, 2], 3),
        "triggered_by, case-insensitive"
    );
    assert_eq!(list(s, q("WORK")).await, (vec![5, 3], 2), "fraise");
    assert_eq!(list(s, q("product")).await, (vec![5, 2], 2), "environment");
    assert_eq!(list(s, q("1.0.5")).await, (vec![5], 1), "version");
    assert_eq!(list(s, q("dep_00003")).await, (vec![3], 1), "formatted id");
    assert_eq!(list(s, q("DEP_0000")).await.1, 6);
    assert_eq!(list(s, q("%")).await, (vec![], 0), "wildcards are literal");
    assert_eq!(list(s, q("1_0")).await, (vec![], 0), "'_' is literal too");
    assert_eq!(list(s, q("")).await.1, 6);

    let after = RunFilter {
        created_after: minutes(20),
        ..f()
    };
    assert_eq!(
        list(s, after).await,
        (vec![6, 5, 4, 3], 4),
        "created_after is inclusive"
    );
    let before = RunFilter {
        created_before: minutes(20),
        ..f()
    };
    assert_eq!(
        list(s, before).await,
        (vec![2, 1], 2),
        "created_before is exclusive"
    );
    let window = RunFilter {
        created_after: minutes(10),
        created_before: minutes(40),
        ..f()
    };
    assert_eq!(list(s, window).await, (vec![4, 3, 2], 3));
}

async fn list_runs_sorts_and_pages(db: &TestDb) {
    let s = &db.store;
    seed_six(s).await;
    // Two runs with the same created_at: id breaks the tie in the sort's direction.
    s.import_runs(&[imported(7, "api", "qa", RunStatus::Success, 50)])
        .await
        .unwrap();
    let sort = |field, descending| RunFilter {
        sort: RunSort { field, descending },
        ..RunFilter::default()
    };

    assert_eq!(
        list(s, sort(RunSortField::CreatedAt, true)).await.0,
        vec![7, 6, 5, 4, 3, 2, 1]
    );
    assert_eq!(
        list(s, sort(RunSortField::CreatedAt, false)).await.0,
        vec![1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(
        list(s, sort(RunSortField::UpdatedAt, false)).await.0,
        vec![6, 7, 5, 4, 3, 2, 1]
    );
    assert_eq!(
        list(s, sort(RunSortField::UpdatedAt, true)).await.0,
        vec![1, 2, 3, 4, 5, 7, 6]
    );
    assert_eq!(
        list(s, sort(RunSortField::Status, false)).await.0,
        vec![4, 2, 5, 6, 1, 3, 7]
    );
    assert_eq!(
        list(s, sort(RunSortField::Status, true)).await.0,
        vec![7, 3, 1, 6, 5, 2, 4]
    );

    let page = |limit, offset| RunFilter {
        limit,
        offset,
        ..RunFilter::default()
    };
    assert_eq!(list(s, page(3, 0)).await, (vec![7, 6, 5], 7));
    assert_eq!(list(s, page(3, 3)).await, (vec![4, 3, 2], 7));
    assert_eq!(list(s, page(3, 6)).await, (vec![1], 7));
    assert_eq!(list(s, page(3, 9)).await, (vec![], 7));
    assert_eq!(
        list(s, page(0, 5)).await,
        (vec![2, 1], 7),
        "limit 0 means no limit"
    );
    let filtered = RunFilter {
        fraise: Some("api".into()),
        limit: 2,
        offset: 1,
        ..RunFilter::default()
    };
    assert_eq!(list(s, filtered).await, (vec![6, 4], 5));
}

async fn tenants_are_isolated(db: &TestDb) {
    let s = &db.store;
    let a = s
        .create_run(&new_run("tenant-a", "api", "staging"))
        .await
        .unwrap();
    let b = s
        .create_run(&new_run("tenant-b", "api", "staging"))
        .await
        .unwrap();

    assert!(matches!(
        s.run("tenant-a", b.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.run("tenant-b", b.id).await.unwrap(), b);
    let (runs, total) = s
        .list_runs("tenant-a", &RunFilter::default())
        .await
        .unwrap();
    assert_eq!((ids(&runs), total), (vec![a.id], 1));
    assert_eq!(
        s.active_run_for("tenant-a", "api", "staging")
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    assert!(matches!(
        s.request_cancel("tenant-a", b.id, "mallory").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.run("tenant-b", b.id).await.unwrap().cancel_requested_by,
        None
    );
    let mut stolen = b.clone();
    stolen.tenant_id = "tenant-a".to_string();
    assert!(matches!(
        s.save_run(&stolen).await,
        Err(StoreError::NotFound)
    ));
    let event = s
        .add_event("tenant-a", Some(b.id), "api", "staging", "x", &json!({}))
        .await;
    assert!(matches!(event, Err(StoreError::NotFound)));
    assert_eq!(s.run("tenant-b", b.id).await.unwrap().events_count, 0);
    s.add_event("tenant-b", Some(b.id), "api", "staging", "x", &json!({}))
        .await
        .unwrap();
    assert!(s
        .service_events("tenant-a", "api", "staging", 10)
        .await
        .unwrap()
        .is_empty());

    s.put_service(&service_record("tenant-b", None))
        .await
        .unwrap();
    assert!(s
        .service("tenant-a", "api", "staging")
        .await
        .unwrap()
        .is_none());
    assert!(s.services("tenant-a").await.unwrap().is_empty());
    assert_eq!(s.all_services().await.unwrap().len(), 1);
    assert_eq!(s.active_runs().await.unwrap().len(), 2);
}

async fn steps_keep_their_order(db: &TestDb) {
    let s = &db.store;
    let run = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let other = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "production"))
        .await
        .unwrap();
    let validate = s.start_step(run.id, "validate").await.unwrap();
    assert_eq!(
        (validate.seq, validate.status, validate.ended_at),
        (0, StepStatus::Running, None)
    );
    let done = s
        .finish_step(validate.id, StepStatus::Completed, Some("ok"), None)
        .await
        .unwrap();
    assert_eq!(done.status, StepStatus::Completed);
    assert_eq!(done.message.as_deref(), Some("ok"));
    assert!(done.ended_at.is_some_and(|t| t >= done.started_at));

    s.start_step(other.id, "validate").await.unwrap();
    let gates = s.start_step(run.id, "gates").await.unwrap();
    let strategy = s.start_step(run.id, "strategy").await.unwrap();
    s.finish_step(
        strategy.id,
        StepStatus::Failed,
        None,
        Some("instance crashed"),
    )
    .await
    .unwrap();

    let steps = s.steps(run.id).await.unwrap();
    let names: Vec<_> = steps.iter().map(|st| (st.seq, st.name.as_str())).collect();
    assert_eq!(names, vec![(0, "validate"), (1, "gates"), (2, "strategy")]);
    assert_eq!(steps[1], gates);
    assert_eq!(steps[2].error.as_deref(), Some("instance crashed"));
    assert_eq!(s.steps(other.id).await.unwrap().len(), 1);

    // Steps started at the same time still get distinct, gapless positions.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.start_step(other.id, &format!("hook {i}")).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let seqs: Vec<i64> = s
        .steps(other.id)
        .await
        .unwrap()
        .iter()
        .map(|st| st.seq)
        .collect();
    assert_eq!(seqs, (0..7).collect::<Vec<_>>());

    assert!(matches!(
        s.start_step(999, "x").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.finish_step(999, StepStatus::Completed, None, None).await,
        Err(StoreError::NotFound)
    ));
}

async fn events_and_logs_are_counted_on_the_run(db: &TestDb) {
    let s = &db.store;
    let run = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let started = s
        .add_event(
            DEFAULT_TENANT,
            Some(run.id),
            "api",
            "staging",
            "deployment.started",
            &json!({"v": "1.2.0"}),
        )
        .await
        .unwrap();
    let shifted = s
        .add_event(
            DEFAULT_TENANT,
            Some(run.id),
            "api",
            "staging",
            "traffic.shifted",
            &json!({"weight": 10}),
        )
        .await
        .unwrap();
    let unbound = s
        .add_event(
            DEFAULT_TENANT,
            None,
            "api",
            "staging",
            "instance.unhealthy",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(unbound.run_id, None);
    for i in 0..3 {
        s.add_log(
            run.id,
            LogLevel::Info,
            Component::Deployment,
            &format!("line {i}"),
            &json!({"i": i}),
        )
        .await
        .unwrap();
    }

    let read = s.run(DEFAULT_TENANT, run.id).await.unwrap();
    assert_eq!((read.events_count, read.log_lines), (2, 3));
    assert_eq!(
        read.updated_at, run.updated_at,
        "counting is not a state change"
    );

    let events = s.events(run.id, None).await.unwrap();
    assert_eq!(events, vec![started.clone(), shifted.clone()]);
    assert_eq!(events[0].data, json!({"v": "1.2.0"}));
    assert_eq!(
        s.events(run.id, Some(started.id)).await.unwrap(),
        vec![shifted.clone()]
    );
    assert!(s.events(run.id, Some(shifted.id)).await.unwrap().is_empty());

    let newest = s
        .service_events(DEFAULT_TENANT, "api", "staging", 2)
        .await
        .unwrap();
    assert_eq!(newest, vec![shifted, unbound.clone()]);
    assert_eq!(
        s.service_events(DEFAULT_TENANT, "api", "staging", 0)
            .await
            .unwrap()
            .len(),
        3
    );

    assert!(matches!(
        s.add_log(999, LogLevel::Info, Component::Hook, "x", &json!({}))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.add_event(DEFAULT_TENANT, Some(999), "api", "staging", "x", &json!({}))
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn logs_filter_by_level_component_lines_and_after_id(db: &TestDb) {
    let s = &db.store;
    let run = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "staging"))
        .await
        .unwrap();
    let other = s
        .create_run(&new_run(DEFAULT_TENANT, "api", "production"))
        .await
        .unwrap();
    let lines = [
        (LogLevel::Debug, Component::Deployment),
        (LogLevel::Info, Component::HealthCheck),
        (LogLevel::Warn, Component::Deployment),
        (LogLevel::Error, Component::Provider),
        (LogLevel::Info, Component::Deployment),
        (LogLevel::Warn, Component::HealthCheck),
    ];
    let mut written = Vec::new();
    for (i, (level, component)) in lines.into_iter().enumerate() {
        written.push(
            s.add_log(run.id, level, component, &format!("m{i}"), &json!({}))
                .await
                .unwrap(),
        );
    }
    s.add_log(
        other.id,
        LogLevel::Error,
        Component::Hook,
        "elsewhere",
        &json!({}),
    )
    .await
    .unwrap();
    let messages =
        |ls: &[fraisier_store::LogLine]| ls.iter().map(|l| l.message.clone()).collect::<Vec<_>>();
    let get = |f: LogFilter| async move { s.logs(run.id, &f).await.unwrap() };

    let (all, total) = get(LogFilter::default()).await;
    assert_eq!((all.clone(), total), (written.clone(), 6));

    let (warn, total) = get(LogFilter {
        level: Some(LogLevel::Warn),
        ..Default::default()
    })
    .await;
    assert_eq!(
        (messages(&warn), total),
        (vec!["m2".into(), "m3".into(), "m5".into()], 3)
    );
    let (info, total) = get(LogFilter {
        level: Some(LogLevel::Info),
        ..Default::default()
    })
    .await;
    assert_eq!((info.len(), total), (5, 5));

    let (deployment, _) = get(LogFilter {
        component: Some(Component::Deployment),
        ..Default::default()
    })
    .await;
    assert_eq!(messages(&deployment), vec!["m0", "m2", "m4"]);

    let (last_two, total) = get(LogFilter {
        lines: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (messages(&last_two), total),
        (vec!["m4".into(), "m5".into()], 6)
    );
    let (last_warn, total) = get(LogFilter {
        lines: 1,
        level: Some(LogLevel::Warn),
        ..Default::default()
    })
    .await;
    assert_eq!((messages(&last_warn), total), (vec!["m5".into()], 3));

    let (after, total) = get(LogFilter {
        after_id: Some(written[3].id),
        ..Default::default()
    })
    .await;
    assert_eq!(
        (messages(&after), total),
        (vec!["m4".into(), "m5".into()], 2)
    );
    assert_eq!(all[0].level, LogLevel::Debug);
    assert_eq!(all[1].component, Component::HealthCheck);
}

fn service_record(tenant: &str, desired: Option<DesiredService>) -> ServiceRecord {
    ServiceRecord {
        tenant_id: tenant.to_string(),
        fraise: "api".to_string(),
        environment: "staging".to_string(),
        current_version: Some("1.2.0".to_string()),
        previous_version: Some("1.1.0".to_string()),
        state: ServiceState::Healthy,
        desired,
        last_run_id: Some(7),
        updated_at: base_time(),
    }
}

fn desired() -> DesiredService {
    DesiredService {
        fraise: "api".to_string(),
        environment: "staging".to_string(),
        generation: 3,
        kind: FraiseType::Api,
        port: Some(8080),
        health_check: Some(HealthCheckSpec {
            kind: ProbeKind::Http {
                path: "/health".to_string(),
                expected_status: vec![200],
            },
            interval_ms: 1_000,
            timeout_ms: 500,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }),
        releases: BTreeMap::from([(
            "1.2.0".to_string(),
            ReleaseSpec {
                source: Some("/srv/releases/api-1.2.0.tar.gz".into()),
                command: "./server --port $PORT".to_string(),
                working_directory: None,
                env: BTreeMap::from([("RUST_LOG".to_string(), "info".to_string())]),
                secrets: Default::default(),
                artifact: None,
            },
        )]),
        instances: vec![
            DesiredInstance {
                id: "api-1".to_string(),
                version: "1.2.0".to_string(),
                weight: 100,
                target: None,
            },
            DesiredInstance {
                id: "api-2".to_string(),
                version: "1.2.0".to_string(),
                weight: 0,
                target: None,
            },
        ],
        drain_timeout_ms: 30_000,
        stop_grace_ms: 10_000,
        schedule: None,
    }
}

async fn service_records_round_trip(db: &TestDb) {
    let s = &db.store;
    assert!(s
        .service(DEFAULT_TENANT, "api", "staging")
        .await
        .unwrap()
        .is_none());
    let first = service_record(DEFAULT_TENANT, None);
    s.put_service(&first).await.unwrap();
    assert_eq!(
        s.service(DEFAULT_TENANT, "api", "staging").await.unwrap(),
        Some(first)
    );

    let mut updated = service_record(DEFAULT_TENANT, Some(desired()));
    updated.state = ServiceState::RollingBack;
    updated.current_version = Some("1.3.0".to_string());
    updated.last_run_id = None;
    updated.updated_at = base_time() + Duration::seconds(5);
    s.put_service(&updated).await.unwrap();
    assert_eq!(
        s.service(DEFAULT_TENANT, "api", "staging").await.unwrap(),
        Some(updated.clone())
    );

    let mut worker = service_record(DEFAULT_TENANT, None);
    worker.fraise = "worker".to_string();
    s.put_service(&worker).await.unwrap();
    let mut production = service_record(DEFAULT_TENANT, None);
    production.environment = "production".to_string();
    s.put_service(&production).await.unwrap();
    s.put_service(&service_record("other", None)).await.unwrap();

    let mine = s.services(DEFAULT_TENANT).await.unwrap();
    assert_eq!(mine, vec![production, updated, worker]);
    assert_eq!(s.all_services().await.unwrap().len(), 4);
}

async fn run_stats_buckets(db: &TestDb) {
    let s = &db.store;
    let empty = s.run_stats(DEFAULT_TENANT, &[1.0, 10.0]).await.unwrap();
    assert_eq!(empty.duration_buckets, vec![0, 0, 0]);
    assert_eq!((empty.duration_count, empty.duration_sum), (0, 0.0));

    let finished = |id, status, secs: i64| {
        let mut run = imported(id, "api", "staging", status, id);
        run.completed_at = Some(run.created_at + Duration::seconds(secs));
        run
    };
    let mut runs = vec![
        finished(1, RunStatus::Success, 1),
        finished(2, RunStatus::Success, 5),
        finished(3, RunStatus::Failed, 5),
        finished(4, RunStatus::Cancelled, 30),
        finished(5, RunStatus::Success, 200),
        imported(6, "api", "staging", RunStatus::Pending, 6),
        imported(7, "api", "production", RunStatus::InProgress, 7),
        imported(8, "worker", "production", RunStatus::Pending, 8),
    ];
    // A run cancelled before it started is measured from its creation.
    let mut never_started = finished(9, RunStatus::Cancelled, 2);
    never_started.started_at = None;
    runs.push(never_started);
    s.import_runs(&runs).await.unwrap();

    let stats = s
        .run_stats(DEFAULT_TENANT, &[1.0, 10.0, 60.0])
        .await
        .unwrap();
    assert_eq!(
        stats.totals,
        vec![
            (RunStatus::Success, 3),
            (RunStatus::Failed, 1),
            (RunStatus::Cancelled, 2)
        ]
    );
    assert_eq!(
        stats.active,
        vec![("production".to_string(), 2), ("staging".to_string(), 1)]
    );
    assert_eq!(stats.duration_buckets, vec![1, 3, 1, 1]);
    assert_eq!(stats.duration_count, 6);
    assert!(
        (stats.duration_sum - 243.0).abs() < 1e-9,
        "{}",
        stats.duration_sum
    );
    assert_eq!(
        s.run_stats(DEFAULT_TENANT, &[])
            .await
            .unwrap()
            .duration_buckets,
        vec![6]
    );
    // Another workspace's figures are its own.
    let other = s.run_stats("other", &[1.0]).await.unwrap();
    assert_eq!((other.duration_count, other.active.len()), (0, 0));
}

async fn import_then_create_continues_ids(db: &TestDb) {
    let s = &db.store;
    let statuses = [RunStatus::Success, RunStatus::Failed, RunStatus::Cancelled];
    let runs: Vec<Run> = (1..=1000)
        .map(|i| {
            let mut run = imported(
                i,
                &format!("f{}", i % 7),
                "staging",
                statuses[i as usize % 3],
                i,
            );
            run.events_count = i % 5;
            run.previous_version = (i % 2 == 0).then(|| "0.9.0".to_string());
            run
        })
        .collect();
    s.import_runs(&runs).await.unwrap();
    assert_eq!(s.run(DEFAULT_TENANT, 500).await.unwrap(), runs[499]);
    assert_eq!(
        s.list_runs(DEFAULT_TENANT, &RunFilter::default())
            .await
            .unwrap()
            .1,
        1000
    );
    let next = s
        .create_run(&new_run(DEFAULT_TENANT, "f1", "staging"))
        .await
        .unwrap();
    assert_eq!(next.id, 1001, "new ids continue above the imported ones");

    // Ids past five digits: allocation follows them and search still finds them.
    s.import_runs(&[imported(123_456, "big", "staging", RunStatus::Success, 0)])
        .await
        .unwrap();
    let next = s
        .create_run(&new_run(DEFAULT_TENANT, "f2", "staging"))
        .await
        .unwrap();
    assert_eq!(next.id, 123_457);
    assert_eq!(run_id_string(next.id), "dep_123457");
    let q = |text: &str| RunFilter {
        q: Some(text.to_string()),
        ..Default::default()
    };
    let found = s.list_runs(DEFAULT_TENANT, &q("dep_123457")).await.unwrap();
    assert_eq!(ids(&found.0), vec![123_457]);
    let found = s.list_runs(DEFAULT_TENANT, &q("dep_01001")).await.unwrap();
    assert_eq!(ids(&found.0), vec![1001]);

    s.import_runs(&[]).await.unwrap();
    let clash = s
        .import_runs(&[imported(5, "x", "y", RunStatus::Success, 0)])
        .await;
    assert!(clash.is_err(), "an import never overwrites a run");
    assert_eq!(s.run(DEFAULT_TENANT, 5).await.unwrap(), runs[4]);
}

async fn users_create_lookup_and_duplicates(db: &TestDb) {
    let s = &db.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    let roles = vec!["admin".to_string(), "deployer".to_string()];
    let alice = s
        .create_user("alice", "$argon2id$hash1", DEFAULT_TENANT, &roles)
        .await
        .unwrap();
    assert_eq!(
        (
            alice.user.username.as_str(),
            alice.roles.clone(),
            alice.workspace.as_str()
        ),
        ("alice", roles.clone(), DEFAULT_TENANT)
    );
    // Usernames are global: the same name in another workspace is taken too.
    for ws in [DEFAULT_TENANT, "other"] {
        assert!(matches!(
            s.create_user("alice", "$argon2id$other", ws, &[]).await,
            Err(StoreError::AlreadyExists(_))
        ));
    }
    assert_eq!(s.user_by_name("alice").await.unwrap(), alice.user);
    assert_eq!(s.member(DEFAULT_TENANT, "alice").await.unwrap(), alice);
    assert!(matches!(
        s.user_by_name("bob").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.member("other", "alice").await,
        Err(StoreError::NotFound)
    ));

    // Roles per workspace: joining another workspace leaves the first as it was.
    let viewer = vec!["viewer".to_string()];
    let in_other = s.set_roles("other", "alice", &viewer).await.unwrap();
    assert_eq!(in_other.roles, viewer);
    assert_eq!(
        s.member(DEFAULT_TENANT, "alice").await.unwrap().roles,
        roles
    );
    assert_eq!(
        s.memberships(alice.user.id).await.unwrap(),
        vec![
            (DEFAULT_TENANT.to_string(), roles.clone()),
            ("other".to_string(), viewer.clone())
        ]
    );
    assert_eq!(s.members("other").await.unwrap().len(), 1);
    assert!(matches!(
        s.set_roles("other", "bob", &viewer).await,
        Err(StoreError::NotFound)
    ));

    s.set_password("alice", "$argon2id$new").await.unwrap();
    assert_eq!(
        s.user_by_name("alice").await.unwrap().password_hash,
        "$argon2id$new"
    );
    assert!(matches!(
        s.set_password("bob", "x").await,
        Err(StoreError::NotFound)
    ));

    // What a request with a token of alice's sees, as it changes.
    let sub = s
        .token_subject(alice.user.id, "other", "jti-1")
        .await
        .unwrap();
    assert_eq!(
        (sub.disabled, sub.revoked, sub.roles),
        (false, false, Some(viewer.clone()))
    );
    s.set_disabled("alice", true).await.unwrap();
    s.revoke_token("jti-1", Utc::now() + Duration::hours(1))
        .await
        .unwrap();
    s.revoke_token("jti-1", Utc::now() + Duration::hours(1))
        .await
        .unwrap();
    s.revoke_token("jti-old", Utc::now() - Duration::hours(1))
        .await
        .unwrap();
    let sub = s
        .token_subject(alice.user.id, "third", "jti-1")
        .await
        .unwrap();
    assert_eq!((sub.disabled, sub.revoked, sub.roles), (true, true, None));
    assert_eq!(s.prune_revoked_tokens().await.unwrap(), 1);
    assert!(
        s.token_subject(alice.user.id, "x", "jti-1")
            .await
            .unwrap()
            .revoked
    );

    // Leaving the last workspace deletes the user, and their keys with them.
    let key = s
        .create_api_key(&fraisier_store::NewApiKey {
            workspace: "other".into(),
            user_id: alice.user.id,
            name: "ci".into(),
            prefix: "fsk_abcd".into(),
            key_hash: "h1".into(),
            roles: viewer.clone(),
            expires_at: None,
        })
        .await
        .unwrap();
    assert_eq!(key.username, "alice");
    s.remove_member("other", "alice").await.unwrap();
    assert!(matches!(
        s.api_key_by_hash("h1").await,
        Err(StoreError::NotFound)
    ));
    assert!(s.user_by_name("alice").await.is_ok());
    assert!(matches!(
        s.remove_member("other", "alice").await,
        Err(StoreError::NotFound)
    ));
    s.remove_member(DEFAULT_TENANT, "alice").await.unwrap();
    assert!(matches!(
        s.user_by_name("alice").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.token_subject(alice.user.id, DEFAULT_TENANT, "j").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.count_users().await.unwrap(), 0);
}

async fn api_keys_are_found_by_hash_and_scoped(db: &TestDb) {
    let s = &db.store;
    let bob = s
        .create_user(
            "bob",
            "$argon2id$h",
            DEFAULT_TENANT,
            &["developer".to_string()],
        )
        .await
        .unwrap();
    let new = |name: &str, hash: &str| fraisier_store::NewApiKey {
        workspace: DEFAULT_TENANT.into(),
        user_id: bob.user.id,
        name: name.into(),
        prefix: format!("fsk_{hash}"),
        key_hash: hash.into(),
        roles: vec!["developer".into()],
        expires_at: Some(Utc::now() + Duration::days(1)),
    };
    let a = s.create_api_key(&new("ci", "ha")).await.unwrap();
    let b = s.create_api_key(&new("bot", "hb")).await.unwrap();
    assert!(s.create_api_key(&new("dup", "ha")).await.is_err());
    let listed = s.api_keys(DEFAULT_TENANT, Some(bob.user.id)).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id).collect::<Vec<_>>(),
        [b.id, a.id]
    );
    assert_eq!(s.api_keys(DEFAULT_TENANT, None).await.unwrap().len(), 2);
    assert!(s.api_keys("other", None).await.unwrap().is_empty());

    let held = s.api_key_by_hash("ha").await.unwrap();
    assert_eq!(held.key, a);
    assert_eq!(held.user_roles, Some(vec!["developer".to_string()]));
    assert!(!held.user_disabled);
    let at = Utc::now();
    s.touch_api_key(a.id, at).await.unwrap();
    assert_eq!(
        s.api_key(DEFAULT_TENANT, a.id)
            .await
            .unwrap()
            .last_used_at
            .map(|t| t.timestamp_millis()),
        Some(at.timestamp_millis())
    );
    assert!(matches!(
        s.revoke_api_key("other", a.id).await,
        Err(StoreError::NotFound)
    ));
    let revoked = s.revoke_api_key(DEFAULT_TENANT, a.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        s.revoke_api_key(DEFAULT_TENANT, a.id)
            .await
            .unwrap()
            .revoked_at,
        revoked.revoked_at,
        "revoking twice keeps the first time"
    );
}

async fn audit_records_chain_and_tampering_is_found(db: &TestDb) {
    use fraisier_store::{AuditFilter, AuditOutcome, NewAuditRecord};
    let s = &db.store;
    assert_eq!(s.verify_audit().await.unwrap(), (0, None));
    let record = |i: u16, ws: &str, outcome: AuditOutcome| NewAuditRecord {
        workspace: ws.into(),
        actor: if i % 2 == 0 {
            "alice".into()
        } else {
            "bob".into()
        },
        actor_kind: "user".into(),
        credential: None,
        action: "deployment.create".into(),
        resource: format!("dep_{i:05}"),
        service: Some("api@production".into()),
        method: "POST".into(),
        path: "/api/v1/deployments/api/production".into(),
        request_id: format!("req_{i}"),
        source: "127.0.0.1".into(),
        outcome: Some(outcome),
        status: 202,
        detail: None,
    };
    let first = s
        .append_audit(&record(1, DEFAULT_TENANT, AuditOutcome::Success))
        .await
        .unwrap();
    assert_eq!(first.prev_hash, fraisier_store::audit_genesis());
    let mut last = first.clone();
    for i in 2..=6 {
        let outcome = if i == 4 {
            AuditOutcome::Denied
        } else {
            AuditOutcome::Success
        };
        let ws = if i == 5 { "other" } else { DEFAULT_TENANT };
        let r = s.append_audit(&record(i, ws, outcome)).await.unwrap();
        assert_eq!(
            r.prev_hash, last.hash,
            "each record links to the one before"
        );
        last = r;
    }
    assert_eq!(s.verify_audit().await.unwrap(), (6, None));

    let all = AuditFilter {
        limit: 50,
        ..AuditFilter::default()
    };
    let (page, total) = s.audit(DEFAULT_TENANT, &all).await.unwrap();
    assert_eq!(total, 5, "another workspace's records are not listed");
    assert_eq!(page[0].record.request_id, "req_6", "newest first");
    let (denied, n) = s
        .audit(
            DEFAULT_TENANT,
            &AuditFilter {
                outcome: Some(AuditOutcome::Denied),
                ..all.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!((n, denied[0].record.resource.as_str()), (1, "dep_00004"));
    let (_, n) = s
        .audit(
            DEFAULT_TENANT,
            &AuditFilter {
                actor: Some("bob".into()),
                ..all.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let (_, n) = s
        .audit(
            DEFAULT_TENANT,
            &AuditFilter {
                resource: Some("dep_00003".into()),
                ..all.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (p2, n) = s
        .audit(
            DEFAULT_TENANT,
            &AuditFilter {
                limit: 2,
                offset: 1,
                ..all.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (n, p2.len(), p2[0].record.request_id.as_str()),
        (5, 2, "req_4")
    );
    let (_, n) = s
        .audit(
            DEFAULT_TENANT,
            &AuditFilter {
                since: Some(Utc::now() + Duration::hours(1)),
                ..all.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Someone with database access edits a record: the chain breaks there.
    sqlx::any::install_default_drivers();
    let mut raw = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
        .execute(&mut raw)
        .await
        .unwrap();
    let (checked, broken) = s.verify_audit().await.unwrap();
    assert_eq!(checked, 2);
    let broken = broken.unwrap();
    assert_eq!(broken.id, 3);
    assert!(broken.reason.contains("altered"), "{}", broken.reason);
    sqlx::query("UPDATE audit_log SET actor = 'bob' WHERE id = 3")
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(s.verify_audit().await.unwrap().1, None);
    // ...or removes one: the next record no longer links.
    sqlx::query("DELETE FROM audit_log WHERE id = 4")
        .execute(&mut raw)
        .await
        .unwrap();
    let broken = s.verify_audit().await.unwrap().1.unwrap();
    assert_eq!(broken.id, 5);
    assert!(broken.reason.contains("removed"), "{}", broken.reason);
    raw.close().await.unwrap();
}

async fn workspaces_and_projects_are_declared_made_and_scoped(db: &TestDb) {
    use fraisier_store::GroupFields;
    let s = &db.store;
    let fields = |name: &str, display: Option<&str>| GroupFields {
        name: name.into(),
        display_name: display.map(str::to_string),
        description: None,
    };
    s.declare_workspaces(&[fields("default", None), fields("team-a", Some("Team A"))])
        .await
        .unwrap();
    let made = s
        .create_workspace(&fields("team-b", Some("B")))
        .await
        .unwrap();
    assert!(!made.declared);
    assert!(matches!(
        s.create_workspace(&fields("team-a", None)).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let all = s.workspaces().await.unwrap();
    let names: Vec<(&str, bool)> = all.iter().map(|w| (w.name.as_str(), w.declared)).collect();
    assert_eq!(
        names,
        [("default", true), ("team-a", true), ("team-b", false)]
    );
    // A workspace no longer declared stays, as if made through the API; the file's words win.
    s.declare_workspaces(&[fields("default", None), fields("team-b", Some("Team B"))])
        .await
        .unwrap();
    assert!(!s.workspace("team-a").await.unwrap().declared);
    let b = s.workspace("team-b").await.unwrap();
    assert_eq!(
        (b.declared, b.display_name.as_deref()),
        (true, Some("Team B"))
    );
    let a = s
        .update_workspace(&GroupFields {
            name: "team-a".into(),
            display_name: Some("A".into()),
            description: Some("the first team".into()),
        })
        .await
        .unwrap();
    assert_eq!(a.description.as_deref(), Some("the first team"));
    s.delete_workspace("team-a").await.unwrap();
    assert!(matches!(
        s.workspace("team-a").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_workspace("team-a").await,
        Err(StoreError::NotFound)
    ));

    // Projects live inside a workspace.
    s.declare_projects("default", &[fields("payments", None)])
        .await
        .unwrap();
    s.create_project("default", &fields("search", Some("Search")))
        .await
        .unwrap();
    s.create_project("team-b", &fields("search", None))
        .await
        .unwrap();
    let p: Vec<String> = s
        .projects("default")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(p, ["payments", "search"]);
    assert_eq!(s.projects("team-b").await.unwrap().len(), 1);
    assert_eq!(
        s.project("team-b", "search")
            .await
            .unwrap()
            .workspace
            .as_deref(),
        Some("team-b")
    );
    assert!(matches!(
        s.project("team-b", "payments").await,
        Err(StoreError::NotFound)
    ));
    let updated = s
        .update_project("default", &fields("search", Some("Find")))
        .await
        .unwrap();
    assert_eq!(updated.display_name.as_deref(), Some("Find"));
    s.delete_project("team-b", "search").await.unwrap();
    assert!(
        s.project("default", "search").await.is_ok(),
        "another workspace's is untouched"
    );
}

async fn import_100k_runs_takes_seconds(db: &TestDb) {
    let s = &db.store;
    let statuses = [RunStatus::Success, RunStatus::Failed, RunStatus::Cancelled];
    let runs: Vec<Run> = (1..=100_000)
        .map(|i| {
            imported(
                i,
                &format!("f{}", i % 50),
                ["dev", "staging", "production"][i as usize % 3],
                statuses[i as usize % 3],
                i,
            )
        })
        .collect();
    let started = Instant::now();
    s.import_runs(&runs).await.unwrap();
    let imported_in = started.elapsed();

    let started = Instant::now();
    let (page, total) = s
        .list_runs(
            DEFAULT_TENANT,
            &RunFilter {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let listed_in = started.elapsed();
    assert_eq!((page.len(), total), (50, 100_000));
    let started = Instant::now();
    let filtered = RunFilter {
        status: Some(RunStatus::Failed),
        environment: Some("staging".into()),
        sort: RunSort {
            field: RunSortField::UpdatedAt,
            descending: true,
        },
        limit: 50,
        ..Default::default()
    };
    let (_, failed_staging) = s.list_runs(DEFAULT_TENANT, &filtered).await.unwrap();
    let filtered_in = started.elapsed();
    let started = Instant::now();
    let searched = RunFilter {
        q: Some("F49".into()),
        limit: 50,
        ..Default::default()
    };
    let (_, found) = s.list_runs(DEFAULT_TENANT, &searched).await.unwrap();
    let searched_in = started.elapsed();
    assert!(failed_staging > 0 && found > 0);
    let started = Instant::now();
    let stats = s
        .run_stats(DEFAULT_TENANT, &[1.0, 10.0, 60.0])
        .await
        .unwrap();
    let stats_in = started.elapsed();
    assert_eq!(stats.duration_count, 100_000);
    println!(
        "{}: import 100k {imported_in:?}, list page+count {listed_in:?}, \
         filtered {filtered_in:?}, searched {searched_in:?}, stats {stats_in:?}",
        s.backend()
    );
    assert!(imported_in < std::time::Duration::from_secs(60));
}
