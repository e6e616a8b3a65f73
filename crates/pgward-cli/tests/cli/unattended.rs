//! Unattended operation: `pgward run` as the nightly job, retention that
//! cannot eat good backups, and alerts and heartbeats sent over real HTTP
//! to a listener that records what arrived and when.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "SeCrEtPushToken4711";

/// The manifests in a repository right now, for the listener to record
/// at the moment a notification arrives.
fn manifests_in(repo: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(repo.join("backups"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".manifest.json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

struct Job {
    ws: Workspace,
    config: PathBuf,
}

/// A database, and a configuration with a Kuma push target (its URL in a
/// file), the given policy and `extra` TOML.
fn job(hint: &str, listener_port: u16, kind: &str, extra: &str) -> Job {
    let ws = Workspace::new();
    let db = cluster().create_database(hint);
    load_rows(&db, "public.items", 200);
    let url = match kind {
        "uptime-kuma" => {
            format!("http://127.0.0.1:{listener_port}/api/push/{TOKEN}?status=up&msg=OK&ping=")
        }
        // healthchecks' ping-key form: the key, then the check's slug.
        _ => format!("http://127.0.0.1:{listener_port}/ping/{TOKEN}/nightly-backup"),
    };
    let url_file = ws.file("push-url", &format!("{url}\n"));
    let config = ws.file(
        "pgward.toml",
        &format!(
            "[connection]\ndbname = \"{db}\"\n\n{extra}\n\n[[notify]]\nkind = \"{kind}\"\nurl-file = \"{}\"\ntimeout = \"2s\"\nretries = 1\n",
            url_file.display()
        ),
    );
    Job { ws, config }
}

impl Job {
    fn pgward(&self, args: &[&str]) -> Run {
        run(pgward(&self.ws.repo())
            .arg("--config")
            .arg(&self.config)
            .args(args))
    }
}

#[track_caller]
fn assert_no_token(res: &Run) {
    assert!(
        !res.stdout.contains(TOKEN) && !res.stderr.contains(TOKEN),
        "the push token leaked:\n{}\n{}",
        res.stdout,
        res.stderr
    );
}

fn query(target: &str, key: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        .map(String::from)
}

#[test]
fn a_successful_run_sends_exactly_one_up_after_the_manifest_exists() {
    let ws_probe = std::sync::Arc::new(std::sync::Mutex::new(PathBuf::new()));
    let probe_path = ws_probe.clone();
    let listener = HttpListener::start(Answer::Ok, move || {
        manifests_in(&probe_path.lock().unwrap())
    });
    let job = job(
        "run_ok",
        listener.port,
        "uptime-kuma",
        "[policy]\nkeep-last = 2\ndrill-every = \"always\"",
    );
    *ws_probe.lock().unwrap() = job.ws.repo();

    let res = job.pgward(&["--json", "run"]);
    res.assert_ok();
    assert_no_token(&res);
    let report = res.json();
    let steps: Vec<(String, String)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("backup", "ok"),
            ("verify", "ok"),
            ("drill", "ok"),
            ("prune", "ok")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let id = report["backup-id"].as_str().unwrap().to_string();
    let received = listener.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let push = &received[0];
    assert_eq!(push.method, "GET");
    assert!(
        push.target.starts_with(&format!("/api/push/{TOKEN}?")),
        "{}",
        push.target
    );
    assert_eq!(query(&push.target, "status").as_deref(), Some("up"));
    assert!(query(&push.target, "ping").is_some_and(|p| p.parse::<u64>().is_ok()));
    assert!(
        push.seen.contains(&format!("{id}.manifest.json")),
        "the up was sent before the manifest existed: {}",
        push.seen
    );
    // The delivery is in the document, masked.
    let notifications = report["notifications"].to_string();
    assert!(notifications.contains("/api/push/****"), "{notifications}");

    // Two more runs: keep-last 2 prunes the oldest; --quiet says nothing.
    job.pgward(&["--json", "run"]).assert_ok();
    let quiet = job.pgward(&["--quiet", "run"]);
    quiet.assert_ok();
    assert_eq!(quiet.stdout, "", "--quiet printed on success");
    let list = job.pgward(&["--json", "list"]);
    let ids = listed_backup_ids(&list.json());
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&id), "the oldest was kept: {ids:?}");
    assert_eq!(listener.received().len(), 3);
    assert!(
        listener
            .received()
            .iter()
            .all(|r| query(&r.target, "status").as_deref() == Some("up"))
    );
}

#[test]
fn a_failing_backup_sends_down_with_its_cause_and_nothing_else() {
    let listener = HttpListener::start(Answer::Ok, String::new);
    let job = job(
        "run_fail",
        listener.port,
        "uptime-kuma",
        "[policy]\nkeep-last = 1",
    );
    // pg_dump that dies half way: its archive is truncated.
    let broken = job.ws.script(
        "pg_dump",
        &format!(
            "REAL='{}'\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n\"$REAL\" \"$@\" | head -c 2000\nexit 1",
            real_pg_dump()
        ),
    );
    let res = job.pgward(&["--json", "run", "--pg-dump", broken.to_str().unwrap()]);
    res.assert_exit(1);
    assert_no_token(&res);
    let received = listener.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        query(&received[0].target, "status").as_deref(),
        Some("down")
    );
    let msg = query(&received[0].target, "msg").unwrap();
    assert!(msg.contains("backup%20failed"), "{msg}");
    let report = res.json();
    assert_eq!(report["steps"][0]["status"], "failed");
    assert_eq!(
        report["steps"][3]["status"], "skipped",
        "a failed backup skips prune"
    );
    // Nothing was counted as a backup.
    assert!(manifests_in(&job.ws.repo()).is_empty());
}

#[test]
fn a_hanging_or_failing_endpoint_costs_at_most_its_timeout_and_changes_no_verdict() {
    for answer in [Answer::Hang(Duration::from_secs(30)), Answer::Status(500)] {
        let listener = HttpListener::start(answer, String::new);
        let job = job("run_hang", listener.port, "uptime-kuma", "");
        let started = Instant::now();
        let res = job.pgward(&["backup"]);
        let took = started.elapsed();
        res.assert_ok();
        assert_no_token(&res);
        assert!(
            res.stderr.contains("FAILED after 2 attempt(s)"),
            "{answer:?}: {}",
            res.stderr
        );
        assert!(res.stderr.contains("/api/push/****"), "{}", res.stderr);
        // Two attempts of at most 2 s each and a 0.5 s backoff, plus the
        // backup itself.
        assert!(took < Duration::from_secs(12), "{answer:?} took {took:?}");
        assert_eq!(listener.received().len(), 2, "{answer:?}: one retry");
    }
}

#[test]
fn healthchecks_get_start_and_the_summary_and_webhooks_the_document() {
    let listener = HttpListener::start(Answer::Ok, String::new);
    let hc_job = job("run_hc", listener.port, "healthchecks", "");
    let res = hc_job.pgward(&["--json", "backup"]);
    res.assert_ok();
    assert_no_token(&res);
    assert!(res.stdout.contains("127.0.0.1:"), "{}", res.stdout);
    let checked = hc_job.pgward(&["check"]);
    assert_no_token(&checked);
    let received = listener.received();
    let targets: Vec<(&str, &str)> = received
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        targets,
        vec![
            (
                "POST",
                format!("/ping/{TOKEN}/nightly-backup/start").as_str()
            ),
            ("POST", format!("/ping/{TOKEN}/nightly-backup").as_str()),
            ("HEAD", "/"),
            ("POST", format!("/ping/{TOKEN}/nightly-backup").as_str()),
        ]
    );
    assert!(
        received[1].body.starts_with("backup "),
        "{}",
        received[1].body
    );

    let hook = HttpListener::start(Answer::Ok, String::new);
    let hook_job = job("run_hook", hook.port, "webhook", "");
    hook_job.pgward(&["--json", "check"]).assert_ok();
    let received = hook.received();
    // check's probe is a HEAD of the site's root, never the hook itself.
    assert_eq!(received[0].method, "HEAD");
    assert_eq!(received[0].target, "/");
    assert_eq!(received.len(), 2, "{received:?}");
    let document: Value = serde_json::from_str(&received[1].body).unwrap();
    assert_eq!(document["message-type"], "check");
    assert_eq!(document["pgward-event"], "check");
    assert_eq!(document["ok"], true);
}

/// A backup of `db` in `ws`'s repository; its id.
fn backup_id(ws: &Workspace, db: &str) -> String {
    let res = backup(&ws.repo(), db, &[]);
    res.assert_ok();
    res.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn prune_keeps_the_newest_drilled_backup_and_never_counts_quarantine() {
    let ws = Workspace::new();
    let db = cluster().create_database("prune");
    load_rows(&db, "public.items", 100);
    let oldest = backup_id(&ws, &db);
    let drilled = backup_id(&ws, &db);
    run(pgward(&ws.repo()).args(["--json", "drill", &drilled])).assert_ok();
    let middle = backup_id(&ws, &db);
    let newest = backup_id(&ws, &db);
    // A failed run in quarantine, young: not a backup, not pruned.
    let broken = ws.script(
        "pg_dump",
        "if [ \"$1\" = --version ]; then exec pg_dump --version; fi\nexit 3",
    );
    backup(&ws.repo(), &db, &["--pg-dump", broken.to_str().unwrap()]).assert_exit(1);
    let config = ws.file("pgward.toml", "[policy]\nkeep-last = 1\n");
    let prune = |args: &[&str]| run(pgward(&ws.repo()).arg("--config").arg(&config).args(args));

    let before = snapshot(&ws.repo().join("backups"));
    let plan = prune(&["--json", "prune", "--dry-run"]);
    plan.assert_ok();
    assert_eq!(
        snapshot(&ws.repo().join("backups")),
        before,
        "a dry run removed something"
    );
    let actions: Vec<(String, String)> = plan.json()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().into(),
                b["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect = |id: &str, action: &str| (id.to_string(), action.to_string());
    assert_eq!(
        actions,
        vec![
            expect(&newest, "keep"),
            expect(&middle, "delete"),
            expect(&drilled, "keep"),
            expect(&oldest, "delete"),
        ]
    );
    let text = prune(&["prune", "--dry-run"]);
    assert!(
        text.stdout
            .contains("newest backup whose last drill passed"),
        "{}",
        text.stdout
    );

    prune(&["--json", "prune"]).assert_ok();
    let list = run(pgward(&ws.repo()).args(["--json", "list"]));
    let ids = listed_backup_ids(&list.json());
    assert_eq!(ids, vec![newest.clone(), drilled.clone()]);
    assert_eq!(list.json()["quarantine"].as_array().unwrap().len(), 1);
    assert!(list.json()["orphans"].as_array().unwrap().is_empty());
    for id in [&middle, &oldest] {
        let left: Vec<String> = names_in(&ws.repo().join("backups"))
            .into_iter()
            .filter(|n| n.starts_with(id.as_str()))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // Without a policy, prune refuses rather than guess.
    run(pgward(&ws.repo()).args(["prune"])).assert_exit(2);
}

#[test]
fn a_prune_killed_half_way_leaves_a_consistent_repository() {
    let ws = Workspace::new();
    let db = cluster().create_database("prune_kill");
    load_rows(&db, "public.items", 100);
    let old = backup_id(&ws, &db);
    let new = backup_id(&ws, &db);
    let config = ws.file("pgward.toml", "[policy]\nkeep-last = 1\n");
    // SIGKILL at the first file removal: after the manifest went, before
    // the artifact did.
    let out = std::process::Command::new("strace")
        .args([
            "-f",
            "-o",
            "/dev/null",
            "-e",
            "trace=unlink,unlinkat",
            "-e",
            "inject=unlink,unlinkat:signal=KILL:when=1",
        ])
        .arg(env!("CARGO_BIN_EXE_pgward"))
        .args(["--config"])
        .arg(&config)
        .args(["prune"])
        .envs(cluster().env())
        .env("PGWARD_REPO", ws.repo())
        .env("XDG_CONFIG_HOME", "/nonexistent/pgward-tests")
        .output()
        .unwrap();
    assert!(!out.status.success(), "prune was not killed");
    assert!(
        ws.repo()
            .join("backups")
            .join(format!("{old}.dump.zst"))
            .exists(),
        "killed too late"
    );
    // list is consistent: the half-removed backup is neither a backup nor
    // an orphan, and every listed backup verifies.
    let list = run(pgward(&ws.repo()).args(["--json", "list"]));
    list.assert_ok();
    let ids = listed_backup_ids(&list.json());
    assert_eq!(ids, vec![new.clone()]);
    assert!(
        list.json()["orphans"].as_array().unwrap().is_empty(),
        "{}",
        list.stdout
    );
    run(pgward(&ws.repo()).args(["verify", &new])).assert_ok();
    // The next prune finishes the removal.
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "prune"]));
    res.assert_ok();
    assert_eq!(res.json()["finished-removals"][0], old.as_str());
    assert!(
        names_in(&ws.repo().join("backups"))
            .iter()
            .all(|n| !n.starts_with(old.as_str()))
    );
    assert!(
        names_in(&ws.repo().join("tmp"))
            .iter()
            .all(|n| !n.contains(old.as_str()))
    );
}

/// The fenced block of README.md that starts with `first_line`.
fn readme_block(first_line: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find(first_line)
        .unwrap_or_else(|| panic!("README has no {first_line}"));
    let rest = &readme[start + first_line.len() + 1..];
    rest[..rest.find("```").unwrap()].to_string()
}

#[test]
fn the_shipped_timer_service_and_crontab_line_are_valid_and_in_readme() {
    let contrib = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/systemd"
    ));
    let service = std::fs::read_to_string(contrib.join("pgward.service")).unwrap();
    let timer = std::fs::read_to_string(contrib.join("pgward.timer")).unwrap();
    let cron = std::fs::read_to_string(contrib.join("pgward.cron")).unwrap();
    assert_eq!(
        readme_block("# /etc/systemd/system/pgward.service"),
        service
    );
    assert_eq!(readme_block("# /etc/systemd/system/pgward.timer"), timer);
    assert_eq!(readme_block("# /etc/cron.d/pgward"), cron);
    // The command they run is one pgward takes.
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .to_string();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args, ["--quiet", "run"]);
    let line = cron
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.len(),
        10,
        "m h dom mon dow user VAR=... pgward --quiet run: {line}"
    );
    assert_eq!(&fields[8..], ["--quiet", "run"]);
    let help = run(pgward(Path::new("/nonexistent")).args(["--quiet", "run", "--help"]));
    help.assert_ok();
    // systemd's own verdict, with the binary where the unit expects it.
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let ws = Workspace::new();
        let unit = ws.file(
            "pgward.service",
            &service.replace("/usr/local/bin/pgward", env!("CARGO_BIN_EXE_pgward")),
        );
        let timer_file = ws.file("pgward.timer", &timer);
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .arg(&timer_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    }
}

#[test]
fn completions_and_the_manual_come_from_the_command_line_definition() {
    let bash = run(pgward(Path::new("/nonexistent")).args(["completions", "bash"]));
    bash.assert_ok();
    for word in ["prune", "--dry-run", "--allow-system-database", "drill"] {
        assert!(bash.stdout.contains(word), "bash completion lacks {word}");
    }
    let man = run(pgward(Path::new("/nonexistent")).args(["man"]));
    man.assert_ok();
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH pgward"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
}

#[test]
fn a_failed_drill_in_a_run_prunes_nothing_and_every_target_hears_down_once() {
    let listener = HttpListener::start(Answer::Ok, String::new);
    // A target for some steps only, and a drill that cannot restore: the
    // restore server does not exist.
    let job = job(
        "run_drillfail",
        listener.port,
        "uptime-kuma",
        "[policy]\nkeep-last = 1\ndrill-every = \"always\"\n[restore-connection]\nhost = \"/nonexistent-socket-dir\"",
    );
    let config = std::fs::read_to_string(&job.config).unwrap().replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nevents = [\"backup\", \"prune\"]",
    );
    std::fs::write(&job.config, config).unwrap();
    let first = job.pgward(&["--json", "run"]);
    first.assert_exit(1);
    let second = job.pgward(&["--json", "run"]);
    second.assert_exit(1);
    let report = second.json();
    assert_eq!(report["steps"][2]["status"], "failed", "{report}");
    assert_eq!(report["steps"][3]["status"], "skipped");
    assert!(
        report["steps"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("nothing is pruned")
    );
    // keep-last 1 would have removed the first backup: both are there.
    let list = job.pgward(&["--json", "list"]);
    assert_eq!(list.json()["backups"].as_array().unwrap().len(), 2);
    // One notification per run, and it is "down".
    let received = listener.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(
        received
            .iter()
            .all(|r| query(&r.target, "status").as_deref() == Some("down"))
    );
}

#[test]
fn prune_leaves_a_held_backup_and_removes_old_quarantine() {
    let ws = Workspace::new();
    let db = cluster().create_database("prune_held");
    load_rows(&db, "public.items", 50);
    let old = backup_id(&ws, &db);
    let _new = backup_id(&ws, &db);
    let broken = ws.script(
        "pg_dump",
        "if [ \"$1\" = --version ]; then exec pg_dump --version; fi\nexit 3",
    );
    backup(&ws.repo(), &db, &["--pg-dump", broken.to_str().unwrap()]).assert_exit(1);
    let config = ws.file(
        "pgward.toml",
        "[policy]\nkeep-last = 1\nquarantine-keep = \"0s\"\n",
    );
    // A restore or drill holds the old backup's manifest (shared flock).
    let manifest = ws
        .repo()
        .join("backups")
        .join(format!("{old}.manifest.json"));
    // --no-fork: the process holding the lock is the one killed below.
    let mut holder = std::process::Command::new("flock")
        .args(["--no-fork", "-s"])
        .arg(&manifest)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock (util-linux)");
    std::thread::sleep(Duration::from_millis(300));
    let res = run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["--json", "prune"]));
    let _ = holder.kill();
    let _ = holder.wait();
    res.assert_ok();
    let report = res.json();
    let old_row = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == old.as_str())
        .cloned()
        .unwrap();
    assert_eq!(old_row["action"], "keep", "{old_row}");
    assert!(
        old_row["reasons"]
            .to_string()
            .contains("being restored or drilled")
    );
    assert!(manifest.exists());
    // The quarantined run was older than quarantine-keep: gone, files too.
    assert_eq!(report["quarantine-removed"].as_array().unwrap().len(), 1);
    assert!(
        names_in(&ws.repo().join("quarantine")).is_empty(),
        "{:?}",
        names_in(&ws.repo().join("quarantine"))
    );
    // Released, the next prune removes it.
    run(pgward(&ws.repo())
        .arg("--config")
        .arg(&config)
        .args(["prune"]))
    .assert_ok();
    assert!(!manifest.exists());
}

#[test]
fn a_plain_backup_says_up_after_its_manifest_and_drills_come_when_due() {
    let probe_repo = std::sync::Arc::new(std::sync::Mutex::new(PathBuf::new()));
    let seen = probe_repo.clone();
    let listener = HttpListener::start(Answer::Ok, move || manifests_in(&seen.lock().unwrap()));
    let job = job(
        "due",
        listener.port,
        "uptime-kuma",
        "[policy]\ndrill-every = \"7d\"",
    );
    *probe_repo.lock().unwrap() = job.ws.repo();
    let res = job.pgward(&["--json", "backup"]);
    res.assert_ok();
    let id = res.json()["id"].as_str().unwrap().to_string();
    let received = listener.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].seen.contains(&format!("{id}.manifest.json")),
        "{}",
        received[0].seen
    );
    // No passed drill yet: the first run drills; a week has not passed for
    // the second.
    let first = job.pgward(&["--json", "run"]);
    first.assert_ok();
    assert_eq!(first.json()["steps"][2]["status"], "ok", "{}", first.stdout);
    let second = job.pgward(&["--json", "run"]);
    second.assert_ok();
    assert_eq!(second.json()["steps"][2]["status"], "skipped");
    assert!(
        second.json()["steps"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("not due")
    );
}

#[test]
fn a_backup_finishes_a_removal_a_killed_prune_left() {
    let ws = Workspace::new();
    let db = cluster().create_database("finish_removal");
    load_rows(&db, "public.items", 30);
    let old = backup_id(&ws, &db);
    // What a prune killed after its first step leaves: the manifest renamed
    // to its marker, the artifact still there.
    std::fs::rename(
        ws.repo()
            .join("backups")
            .join(format!("{old}.manifest.json")),
        ws.repo()
            .join("tmp")
            .join(format!("{old}.manifest.json.pruning")),
    )
    .unwrap();
    backup(&ws.repo(), &db, &[]).assert_ok();
    assert!(
        names_in(&ws.repo().join("backups"))
            .iter()
            .all(|n| !n.starts_with(old.as_str()))
    );
    assert!(
        names_in(&ws.repo().join("tmp"))
            .iter()
            .all(|n| !n.contains(old.as_str()))
    );
    // Finished, not kept as a leftover: nothing of it went to quarantine.
    assert!(
        names_in(&ws.repo().join("quarantine"))
            .iter()
            .all(|n| !n.starts_with(old.as_str()))
    );
}
