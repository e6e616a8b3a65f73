//! Which backups `prune` keeps: a pure function of (backups, policy),
//! so that `prune --dry-run` and the real prune decide the same, and the
//! rules can be tested on calendars without a repository.
//!
//! Semantics are restic's and pgBackRest's: within each database and
//! scope, `keep-last N` keeps the N newest; `keep-daily N` keeps the
//! newest backup of each of the N most recent days that have one (hourly,
//! weekly (ISO weeks), monthly and yearly alike, in the configured time
//! zone); `keep-within D` keeps every backup made within D of the group's
//! newest one (restic's rule: when backups stop, the last ones do not age
//! away); a backup can satisfy several rules and is kept if any keeps it.
//! On top of the policy, and whatever it says, pgward never deletes: the
//! newest backup, the newest backup whose last drill passed, nor a backup
//! in use (being restored or drilled). A group of no more than `keep-last`
//! backups is kept whole by keep-last itself.

use crate::config::{PolicyConfig, parse_duration};
use crate::error::{Error, Result};
use crate::scope::Scope;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The retention part of `[policy]`, checked.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<SignedDuration>,
    pub time_zone: TimeZone,
}

impl RetentionPolicy {
    /// The policy `[policy]` sets; `None` when it sets no keep rule at all
    /// (prune then refuses: an empty policy must not mean "delete all").
    pub fn from_config(config: &PolicyConfig) -> Result<Option<RetentionPolicy>> {
        let keep_within = config
            .keep_within
            .as_deref()
            .map(|d| {
                parse_duration(d).map_err(|e| Error::config(format!("policy.keep-within: {e}")))
            })
            .transpose()?;
        let time_zone = match &config.time_zone {
            Some(name) => TimeZone::get(name).map_err(|e| {
                Error::config(format!("policy.time-zone {name:?}: {e}"))
                    .with_hint("use an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"")
            })?,
            None => TimeZone::system(),
        };
        let counts = [
            ("keep-last", config.keep_last),
            ("keep-hourly", config.keep_hourly),
            ("keep-daily", config.keep_daily),
            ("keep-weekly", config.keep_weekly),
            ("keep-monthly", config.keep_monthly),
            ("keep-yearly", config.keep_yearly),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == Some(0)) {
            return Err(Error::config(format!("policy.{name} = 0 keeps nothing"))
                .with_hint("leave the rule out, or keep at least 1"));
        }
        if counts.iter().all(|(_, n)| n.is_none()) && keep_within.is_none() {
            return Ok(None);
        }
        Ok(Some(RetentionPolicy {
            keep_last: config.keep_last,
            keep_hourly: config.keep_hourly,
            keep_daily: config.keep_daily,
            keep_weekly: config.keep_weekly,
            keep_monthly: config.keep_monthly,
            keep_yearly: config.keep_yearly,
            keep_within,
            time_zone,
        }))
    }
}

/// What the planner needs to know of one backup.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub database: String,
    pub scope: Scope,
    pub started_at: Timestamp,
    /// Its last drill passed.
    pub drill_passed: bool,
    /// Being restored or drilled right now.
    pub in_use: bool,
}

/// Why a backup is kept. Several can hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The newest complete backup of its database and scope.
    Newest,
    /// The newest backup whose last drill passed.
    NewestDrilled,
    /// Being restored or drilled.
    InUse,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Newest => "newest backup",
            Reason::NewestDrilled => "newest backup whose last drill passed",
            Reason::InUse => "being restored or drilled",
            Reason::Last => "keep-last",
            Reason::Hourly => "keep-hourly",
            Reason::Daily => "keep-daily",
            Reason::Weekly => "keep-weekly",
            Reason::Monthly => "keep-monthly",
            Reason::Yearly => "keep-yearly",
            Reason::Within => "keep-within",
        }
    }
}

/// The decision on one backup.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    pub id: String,
    pub database: String,
    pub keep: bool,
    /// Why it is kept (empty when deleted).
    pub reasons: Vec<Reason>,
}

/// Decides every backup, newest first within each database and scope.
pub fn plan(backups: &[Candidate], policy: &RetentionPolicy) -> Vec<Decision> {
    let mut groups: BTreeMap<(String, String), Vec<&Candidate>> = BTreeMap::new();
    for backup in backups {
        let scope = backup.scope.selection_key();
        groups
            .entry((backup.database.clone(), scope))
            .or_default()
            .push(backup);
    }
    let mut decisions = Vec::with_capacity(backups.len());
    for (_, mut group) in groups {
        group.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        let mut reasons: Vec<BTreeSet<Reason>> = vec![BTreeSet::new(); group.len()];
        if let Some(first) = reasons.first_mut() {
            first.insert(Reason::Newest);
        }
        if let Some(i) = group.iter().position(|b| b.drill_passed) {
            reasons[i].insert(Reason::NewestDrilled);
        }
        let newest = group.first().map(|b| b.started_at);
        for (i, backup) in group.iter().enumerate() {
            if backup.in_use {
                reasons[i].insert(Reason::InUse);
            }
            if policy.keep_last.is_some_and(|n| i < n as usize) {
                reasons[i].insert(Reason::Last);
            }
            if let (Some(within), Some(newest)) = (policy.keep_within, newest)
                && newest.duration_since(backup.started_at) < within
            {
                reasons[i].insert(Reason::Within);
            }
        }
        for (rule, count, bucket) in [
            (Reason::Hourly, policy.keep_hourly, Bucket::Hour),
            (Reason::Daily, policy.keep_daily, Bucket::Day),
            (Reason::Weekly, policy.keep_weekly, Bucket::Week),
            (Reason::Monthly, policy.keep_monthly, Bucket::Month),
            (Reason::Yearly, policy.keep_yearly, Bucket::Year),
        ] {
            let Some(count) = count else { continue };
            let mut seen: Vec<(i16, i16, i16)> = Vec::new();
            for (i, backup) in group.iter().enumerate() {
                if seen.len() >= count as usize {
                    break;
                }
                let key = bucket.key(&backup.started_at.to_zoned(policy.time_zone.clone()));
                // Newest first: the first backup of a bucket is its newest.
                if seen.last() != Some(&key) && !seen.contains(&key) {
                    seen.push(key);
                    reasons[i].insert(rule);
                }
            }
        }
        for (backup, reasons) in group.into_iter().zip(reasons) {
            decisions.push(Decision {
                id: backup.id.clone(),
                database: backup.database.clone(),
                keep: !reasons.is_empty(),
                reasons: reasons.into_iter().collect(),
            });
        }
    }
    decisions
}

#[derive(Debug, Clone, Copy)]
enum Bucket {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Bucket {
    /// The calendar bucket a local time falls in.
    fn key(self, t: &Zoned) -> (i16, i16, i16) {
        match self {
            // Hours of a day as local clock hours: on the night clocks go
            // back, the repeated hour is one bucket, as people read it.
            Bucket::Hour => (t.year(), t.day_of_year(), i16::from(t.hour())),
            Bucket::Day => (t.year(), t.day_of_year(), 0),
            Bucket::Week => {
                let week = t.date().iso_week_date();
                (week.year(), i16::from(week.week()), 0)
            }
            Bucket::Month => (t.year(), i16::from(t.month()), 0),
            Bucket::Year => (t.year(), 0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut RetentionPolicy)) -> RetentionPolicy {
        let mut p = RetentionPolicy {
            keep_last: None,
            keep_hourly: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            keep_within: None,
            time_zone: TimeZone::get("Europe/Berlin").unwrap(),
        };
        f(&mut p);
        p
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn backup(n: usize, started_at: Timestamp) -> Candidate {
        Candidate {
            id: format!("b{n:04}"),
            database: "app".into(),
            scope: Scope::default(),
            started_at,
            drill_passed: false,
            in_use: false,
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.clone())
            .collect()
    }

    /// One backup every `step`, the newest at `newest`, `count` of them.
    fn series(newest: Timestamp, step: SignedDuration, count: usize) -> Vec<Candidate> {
        (0..count)
            .map(|i| backup(i, newest - step * i as i32))
            .collect()
    }

    #[test]
    fn gfs_over_four_hundred_nightly_backups() {
        let now = at("2026-11-30T03:30:00Z");
        let backups = series(now, SignedDuration::from_hours(24), 400);
        let p = policy(|p| {
            p.keep_last = Some(3);
            p.keep_daily = Some(7);
            p.keep_weekly = Some(4);
            p.keep_monthly = Some(12);
            p.keep_yearly = Some(3);
        });
        let decisions = plan(&backups, &p);
        assert_eq!(decisions.len(), 400);
        let kept = kept(&decisions);
        let by_id = |id: &str| decisions.iter().find(|d| d.id == id).unwrap();
        assert!(by_id("b0000").reasons.contains(&Reason::Newest));
        for i in 0..7 {
            assert!(by_id(&format!("b{i:04}")).reasons.contains(&Reason::Daily));
        }
        assert!(!by_id("b0007").reasons.contains(&Reason::Daily));
        let monthly: Vec<&Decision> = decisions
            .iter()
            .filter(|d| d.reasons.contains(&Reason::Monthly))
            .collect();
        assert_eq!(monthly.len(), 12);
        let yearly: Vec<&Decision> = decisions
            .iter()
            .filter(|d| d.reasons.contains(&Reason::Yearly))
            .collect();
        // 400 days back from 2026-11-30 reaches into 2025 only.
        assert_eq!(yearly.len(), 2);
        assert!(kept.len() < 30, "{} kept", kept.len());
        // Every month's kept backup is that month's newest (its last day).
        for d in monthly {
            let n: usize = d.id[1..].parse().unwrap();
            let t = backups[n].started_at.to_zoned(p.time_zone.clone());
            let next = (backups[n].started_at + SignedDuration::from_hours(24))
                .to_zoned(p.time_zone.clone());
            assert!(
                n == 0 || next.month() != t.month(),
                "{} is not its month's newest",
                d.id
            );
        }
    }

    #[test]
    fn daily_buckets_follow_local_days_across_dst() {
        // Europe/Berlin leaves summer time on 2026-10-25 at 03:00 CEST: that
        // local day has 25 hours. Its 00:30 (22:30 UTC the day before) and
        // 23:30 (22:30 UTC that day) are one local day, two UTC days.
        let backups = vec![
            backup(0, at("2026-10-26T11:00:00Z")), // Oct 26, 12:00 CET
            backup(1, at("2026-10-25T22:30:00Z")), // Oct 25, 23:30 CET
            backup(2, at("2026-10-24T22:30:00Z")), // Oct 25, 00:30 CEST
        ];
        let p = policy(|p| p.keep_daily = Some(3));
        assert_eq!(
            kept(&plan(&backups, &p)),
            vec!["b0000", "b0001"],
            "one per local day: b0002 is Oct 25's older backup"
        );
        let p_utc = policy(|p| {
            p.keep_daily = Some(3);
            p.time_zone = TimeZone::UTC;
        });
        assert_eq!(
            kept(&plan(&backups, &p_utc)),
            vec!["b0000", "b0001", "b0002"],
            "three UTC days"
        );
        // Two backups in the repeated hour 02:00-03:00 of the change night
        // are one hourly bucket.
        let first = at("2026-10-25T00:10:00Z"); // 02:10 CEST
        let second = at("2026-10-25T01:10:00Z"); // 02:10 CET
        let backups = vec![backup(0, second), backup(1, first)];
        let p = policy(|p| p.keep_hourly = Some(2));
        assert_eq!(
            kept(&plan(&backups, &p)),
            vec!["b0000"],
            "same local clock hour"
        );
    }

    #[test]
    fn month_ends_and_leap_days() {
        let backups = vec![
            backup(0, at("2028-03-01T01:00:00Z")),
            backup(1, at("2028-02-29T23:00:00Z")), // 2028-03-01 00:00 in Berlin
            backup(2, at("2028-02-29T12:00:00Z")),
            backup(3, at("2028-02-28T12:00:00Z")),
            backup(4, at("2028-01-31T22:30:00Z")), // 2028-01-31 23:30 in Berlin
        ];
        let p = policy(|p| p.keep_monthly = Some(3));
        let decisions = plan(&backups, &p);
        // March (b0000), February's newest in Berlin time (b0002, since
        // b0001 is already March there), January (b0004).
        assert_eq!(kept(&decisions), vec!["b0000", "b0002", "b0004"]);
        let p = policy(|p| p.keep_daily = Some(3));
        let decisions = plan(&backups, &p);
        // Mar 1 (b0000, b0001 same local day), Feb 29 (b0002), Feb 28.
        assert_eq!(kept(&decisions), vec!["b0000", "b0002", "b0003"]);
    }

    #[test]
    fn the_safety_rules_hold_whatever_the_policy() {
        let now = at("2026-11-30T12:00:00Z");
        let mut backups = series(now, SignedDuration::from_hours(24), 10);
        backups[6].drill_passed = true;
        backups[8].drill_passed = true;
        backups[9].in_use = true;
        let p = policy(|p| p.keep_within = Some(SignedDuration::from_hours(36)));
        let decisions = plan(&backups, &p);
        let by_id = |id: &str| decisions.iter().find(|d| d.id == id).unwrap().clone();
        assert_eq!(by_id("b0000").reasons, vec![Reason::Newest, Reason::Within]);
        assert_eq!(by_id("b0001").reasons, vec![Reason::Within]);
        assert_eq!(by_id("b0006").reasons, vec![Reason::NewestDrilled]);
        assert!(
            !by_id("b0008").keep,
            "only the newest drilled backup is protected"
        );
        assert_eq!(by_id("b0009").reasons, vec![Reason::InUse]);
        assert_eq!(kept(&decisions), vec!["b0000", "b0001", "b0006", "b0009"]);
        // keep-within counts from the group's newest backup, not from now:
        // backups that stopped a month ago are not aged away.
        let stale = series(
            now - SignedDuration::from_hours(24 * 30),
            SignedDuration::from_hours(24),
            5,
        );
        let p = policy(|p| p.keep_within = Some(SignedDuration::from_hours(24 * 3)));
        assert_eq!(kept(&plan(&stale, &p)), vec!["b0000", "b0001", "b0002"]);
        // A group with no more than keep-last backups keeps them all.
        let p = policy(|p| {
            p.keep_last = Some(10);
            p.keep_daily = Some(1);
        });
        assert_eq!(kept(&plan(&backups, &p)).len(), 10);
    }

    #[test]
    fn databases_and_scopes_are_planned_apart() {
        let now = at("2026-11-30T12:00:00Z");
        let mut backups = series(now, SignedDuration::from_hours(1), 4);
        for (i, b) in backups.iter_mut().enumerate() {
            if i % 2 == 1 {
                b.database = "other".into();
            }
        }
        backups[2].scope = Scope {
            schemas: vec!["public".into()],
            ..Scope::default()
        };
        let p = policy(|p| p.keep_last = Some(1));
        // Each of app/whole (b0000), other (b0001, b0003: newest b0001),
        // app/public (b0002) keeps its own newest.
        let decisions = plan(&backups, &p);
        let mut kept = kept(&decisions);
        kept.sort();
        assert_eq!(kept, vec!["b0000", "b0001", "b0002"]);
    }

    #[test]
    fn an_empty_policy_is_no_policy_and_zero_is_refused() {
        assert!(
            RetentionPolicy::from_config(&PolicyConfig::default())
                .unwrap()
                .is_none()
        );
        let zero = PolicyConfig {
            keep_daily: Some(0),
            ..PolicyConfig::default()
        };
        assert!(RetentionPolicy::from_config(&zero).is_err());
        let bad_zone = PolicyConfig {
            keep_last: Some(1),
            time_zone: Some("Mars/Olympus".into()),
            ..PolicyConfig::default()
        };
        assert!(RetentionPolicy::from_config(&bad_zone).is_err());
    }

    #[test]
    fn ten_thousand_backups_plan_quickly() {
        let now = at("2026-11-30T12:00:00Z");
        let backups = series(now, SignedDuration::from_mins(53), 10_000);
        let p = policy(|p| {
            p.keep_last = Some(5);
            p.keep_hourly = Some(48);
            p.keep_daily = Some(30);
            p.keep_weekly = Some(12);
            p.keep_monthly = Some(24);
        });
        let decisions = plan(&backups, &p);
        assert_eq!(decisions.len(), 10_000);
        assert!(kept(&decisions).len() < 150);
    }
}
