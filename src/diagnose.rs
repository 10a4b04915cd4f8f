//! `ferrotron diagnose <out_dir>`: reads the flight records the ranks' watchdogs wrote
//! (`<out_dir>/flight/rank<R>.jsonl`, see `comm::flight`) and says who held the job up: for each
//! operation some ranks were waiting in, which members of its group never entered it (with
//! where they were instead) and which left no record at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::comm::flight::{GroupInfo, Header, Record};

/// An operation ranks were stuck in: (group name, members, sequence number, operation).
type StuckOp = (String, Vec<usize>, u64, String);

/// One rank's flight file.
struct RankFlight {
    header: Header,
    records: Vec<Record>,
}

impl RankFlight {
    /// This rank's last record on the group instance `g` (name and members).
    fn last_on(&self, g: &GroupInfo) -> Option<&Record> {
        let idx = self.header.groups.iter().position(|x| x == g)?;
        self.records.iter().rev().find(|r| r.group == idx)
    }

    /// The oldest unfinished operation and its group.
    fn pending(&self) -> Option<(&Record, &GroupInfo)> {
        let r = self.records.iter().find(|r| r.end_s.is_none())?;
        Some((r, self.header.groups.get(r.group)?))
    }

    /// Seconds this rank did not run, as its watchdog saw it: its longest late wake-up, or how
    /// late it fired.
    fn overshoot_s(&self) -> f64 {
        let h = &self.header;
        let late = if h.timeout_s > 0.0 {
            h.idle_s - h.timeout_s
        } else {
            0.0
        };
        late.max(h.frozen_s)
    }

    fn whereabouts(&self) -> String {
        let h = &self.header;
        let doing = match self.pending() {
            Some((r, g)) => format!("in {} #{} on {} {:?}", r.op, r.seq, g.name, g.members),
            None => "in no communication".into(),
        };
        format!(
            "at step {} ({}), {doing}, no progress for {:.0} s",
            h.step, h.phase, h.idle_s
        )
    }
}

/// Reads every `rank<R>.jsonl` under `<out_dir>/flight`.
fn load(out_dir: &Path) -> Result<BTreeMap<usize, RankFlight>> {
    let dir = out_dir.join("flight");
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "no flight records in {} (written when a rank's watchdog fires)",
            dir.display()
        )
    })?;
    let mut out = BTreeMap::new();
    for e in entries {
        let path = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("rank") && name.ends_with(".jsonl")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header: Header = serde_json::from_str(lines.next().unwrap_or(""))
            .with_context(|| format!("{}: line 1 is not a flight header", path.display()))?;
        let records = lines
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not a flight record", path.display(), i + 2))
            })
            .collect::<Result<Vec<Record>>>()?;
        out.insert(header.rank, RankFlight { header, records });
    }
    if out.is_empty() {
        bail!("no flight records (rank<R>.jsonl) in {}", dir.display());
    }
    Ok(out)
}

/// The report, one finding per line.
pub fn report(out_dir: &Path) -> Result<Vec<String>> {
    let ranks = load(out_dir)?;
    let mut lines = vec![format!(
        "flight records of rank(s) {:?} in {}",
        ranks.keys().collect::<Vec<_>>(),
        out_dir.join("flight").display()
    )];
    for (r, f) in &ranks {
        lines.push(format!("rank {r} ({}): {}", f.header.host, f.whereabouts()));
    }
    // Each distinct operation that ranks were stuck in → (waiting rank, its idle seconds).
    let mut stuck: BTreeMap<StuckOp, Vec<(usize, f64)>> = BTreeMap::new();
    for (r, f) in &ranks {
        if let Some((rec, g)) = f.pending() {
            let key = (g.name.clone(), g.members.clone(), rec.seq, rec.op.clone());
            stuck.entry(key).or_default().push((*r, f.header.idle_s));
        }
    }
    let mut silent = BTreeSet::new();
    let mut blockers = BTreeSet::new();
    for ((name, members, seq, op), waiting) in &stuck {
        let g = GroupInfo {
            name: name.clone(),
            members: members.clone(),
        };
        let waited: Vec<usize> = waiting.iter().map(|w| w.0).collect();
        let secs = waiting.iter().map(|w| w.1).fold(0.0, f64::max);
        for m in members {
            if waited.contains(m) {
                continue;
            }
            blockers.insert(*m);
            match ranks.get(m) {
                None => {
                    silent.insert(*m);
                    lines.push(format!(
                        "rank {m} never showed up for {op} #{seq} on group {name} {members:?} and left no flight record (stopped, killed, or hung without its watchdog); rank(s) {waited:?} waited {secs:.0} s"
                    ));
                }
                Some(f) => {
                    let last = f.last_on(&g).map_or("none".to_string(), |l| {
                        format!(
                            "{} #{}{}",
                            l.op,
                            l.seq,
                            if l.end_s.is_some() {
                                ", completed"
                            } else {
                                ", unfinished"
                            }
                        )
                    });
                    lines.push(format!(
                        "rank {m} never entered {op} #{seq} on group {name} {members:?} (its last operation there: {last}; it was {}); rank(s) {waited:?} waited {secs:.0} s",
                        f.whereabouts()
                    ));
                }
            }
        }
    }
    // The root: ranks others wait for that are not themselves waiting in a communication.
    let roots: Vec<usize> = blockers
        .iter()
        .filter(|m| ranks.get(m).is_none_or(|f| f.pending().is_none()))
        .copied()
        .collect();
    // Every member entered the operation: the one that did not run (its watchdog fired late,
    // e.g. a SIGSTOPped or starved process) held it up.
    let mut frozen: Vec<(f64, String)> = ranks
        .iter()
        .filter(|(_, f)| f.overshoot_s() > 1.0)
        .map(|(r, f)| {
            let secs = f.overshoot_s();
            (
                secs,
                format!(
                    "rank {r} did not run for about {secs:.0} s ({})",
                    f.whereabouts()
                ),
            )
        })
        .collect();
    frozen.sort_by(|a, b| b.0.total_cmp(&a.0)); // the longest first
    let frozen: Vec<String> = frozen.into_iter().map(|f| f.1).collect();
    if roots.is_empty() && !frozen.is_empty() {
        lines.push(format!(
            "=> held up by a rank that stopped running: {}",
            frozen.join("; ")
        ));
    }
    if roots.is_empty() && frozen.is_empty() && !stuck.is_empty() {
        lines.push("=> every member entered the operations ranks wait in and none stands out: a stall inside MPI or the network".into());
    }
    if !roots.is_empty() {
        let how: Vec<String> = roots
            .iter()
            .map(|m| match ranks.get(m) {
                Some(f) => format!("rank {m} {}", f.whereabouts()),
                None => format!("rank {m} (no flight record)"),
            })
            .collect();
        lines.push(format!("=> held up by {}", how.join("; ")));
    }
    if stuck.is_empty() {
        lines.push("no rank was waiting in a communication: the ranks with records were stuck outside MPI (see where each was above)".into());
    }
    let all: BTreeSet<usize> = ranks
        .values()
        .flat_map(|f| {
            f.header
                .groups
                .iter()
                .flat_map(|g| g.members.iter().copied())
        })
        .collect();
    let missing: Vec<usize> = all
        .iter()
        .filter(|r| !ranks.contains_key(r) && !silent.contains(r))
        .copied()
        .collect();
    if !missing.is_empty() {
        lines.push(format!("no flight record from rank(s) {missing:?}"));
    }
    Ok(lines)
}

/// Prints [`report`] for `out_dir`.
pub fn run(out_dir: &Path) -> Result<()> {
    for l in report(out_dir)? {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rank: usize, idle: f64, records: &[(u64, Option<f64>)]) {
        let h = Header {
            rank,
            host: "h".into(),
            step: 4,
            phase: "step".into(),
            idle_s: idle,
            timeout_s: 5.0,
            frozen_s: 0.0,
            reason: "test".into(),
            groups: vec![GroupInfo {
                name: "dp".into(),
                members: vec![0, 1],
            }],
        };
        let mut text = serde_json::to_string(&h).unwrap() + "\n";
        for &(seq, end_s) in records {
            let r = Record {
                group: 0,
                seq,
                op: "all_reduce".into(),
                bytes: 8,
                start_s: 1.0,
                end_s,
                step: 4,
            };
            text += &(serde_json::to_string(&r).unwrap() + "\n");
        }
        std::fs::create_dir_all(dir.join("flight")).unwrap();
        std::fs::write(dir.join("flight").join(format!("rank{rank}.jsonl")), text).unwrap();
    }

    #[test]
    fn names_the_rank_that_never_entered_and_the_one_that_stopped_running() {
        let d = std::env::temp_dir().join(format!("ferrotron-diag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        // Rank 1 never entered #8.
        write(&d, 0, 5.1, &[(7, Some(2.0)), (8, None)]);
        write(&d, 1, 5.1, &[(7, Some(2.0))]);
        let r = report(&d).unwrap().join("\n");
        assert!(
            r.contains("rank 1 never entered all_reduce #8 on group dp [0, 1]"),
            "{r}"
        );
        assert!(r.contains("=> held up by rank 1"), "{r}");
        // Both entered #8; rank 1's watchdog fired 3 s late: it did not run.
        write(&d, 1, 8.0, &[(7, Some(2.0)), (8, None)]);
        let r = report(&d).unwrap().join("\n");
        assert!(
            r.contains(
                "=> held up by a rank that stopped running: rank 1 did not run for about 3 s"
            ),
            "{r}"
        );
        // Both entered #8 and fired on time, but rank 1's watchdog saw itself not run for 4 s.
        let f = d.join("flight/rank1.jsonl");
        let t = std::fs::read_to_string(&f).unwrap().replacen(
            "\"frozen_s\":0.0",
            "\"frozen_s\":4.0",
            1,
        );
        std::fs::write(&f, t.replacen("\"idle_s\":8.0", "\"idle_s\":5.1", 1)).unwrap();
        let r = report(&d).unwrap().join("\n");
        assert!(r.contains("rank 1 did not run for about 4 s"), "{r}");
        // Only rank 0 wrote: rank 1 left no record.
        std::fs::remove_file(d.join("flight/rank1.jsonl")).unwrap();
        let r = report(&d).unwrap().join("\n");
        assert!(r.contains("=> held up by rank 1 (no flight record)"), "{r}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
