//! The report's text outputs: `summary.csv` and the table printed on stdout.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{Context, Result};

use super::{RunRow, Status};

/// The first line of `summary.csv`.
pub(crate) const CSV_HEADER: &str = "nodes,status,world,dp,tp,pp,global_batch_size,\
tokens_per_step,steps_measured,step_ms_median,tokens_per_s,ideal_tokens_per_s,efficiency,\
predicted_tokens_per_s,compute_ms,comm_tp_ms,comm_dp_ms,comm_pp_ms,comm_emb_ms,comm_world_ms,bubble_ms,other_ms,note";

/// Writes `rows` as CSV (header [`CSV_HEADER`], one line per row, `\n` line ends) to `path`.
pub(crate) fn write_csv(path: &Path, rows: &[RunRow]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&csv_line(row));
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `Some(v)` with `digits` decimals; `None` as an empty cell.
fn num(value: Option<f64>, digits: usize) -> String {
    value.map_or(String::new(), |v| format!("{v:.digits$}"))
}

/// `Some(v)` as an integer; `None` as an empty cell.
fn int(value: Option<u64>) -> String {
    value.map_or(String::new(), |v| v.to_string())
}

/// One CSV line of `row` (without line end). Cells a failed or missing run lacks are empty.
fn csv_line(row: &RunRow) -> String {
    let info = row.info.as_ref();
    let m = row.measured.as_ref();
    let ms = |f: fn(&super::Measured) -> f64| num(m.map(f), 3);
    let mut cells = vec![
        row.nodes.to_string(),
        row.status.as_str().to_string(),
        int(info.map(|i| i.world)),
        int(info.map(|i| i.grid.dp)),
        int(info.map(|i| i.grid.tp)),
        int(info.map(|i| i.grid.pp)),
        int(row.global_batch_size),
        int(info.and_then(|i| i.tokens_per_step())),
        int(m.map(|m| m.steps_measured as u64)),
        ms(|m| m.step_ms_median),
        num(row.tokens_per_s, 1),
        num(row.ideal_tokens_per_s, 1),
        num(row.efficiency, 4),
        num(row.predicted_tokens_per_s, 1),
        ms(|m| m.compute_ms),
    ];
    cells.extend((0..5).map(|g| num(m.map(|m| m.comm_ms[g]), 3)));
    cells.push(ms(|m| m.bubble_ms));
    cells.push(ms(|m| m.other_ms));
    cells.push(row.notes.join("; "));
    let cells: Vec<Cow<str>> = cells.iter().map(|c| csv_field(c)).collect();
    cells.join(",")
}

/// `cell` as a CSV field (RFC 4180): quoted, with inner quotes doubled, when it holds a comma,
/// quote or line break; unchanged otherwise.
pub(crate) fn csv_field(cell: &str) -> Cow<'_, str> {
    if cell.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", cell.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The stdout table: nodes, status, tokens/s, efficiency, median step time and notes, aligned.
pub(crate) fn format_table(rows: &[RunRow]) -> String {
    let mut text = format!(
        "{:>5}  {:<7}  {:>12}  {:>10}  {:>10}  note\n",
        "nodes", "status", "tokens/s", "efficiency", "step ms"
    );
    let dash = || "-".to_string();
    for row in rows {
        let step_ms = row.measured.as_ref().map(|m| m.step_ms_median);
        let line = format!(
            "{:>5}  {:<7}  {:>12}  {:>10}  {:>10}  {}",
            row.nodes,
            row.status.as_str(),
            row.tokens_per_s.map_or_else(dash, |v| format!("{v:.1}")),
            row.efficiency.map_or_else(dash, |v| format!("{v:.3}")),
            step_ms.map_or_else(dash, |v| format!("{v:.2}")),
            row.notes.join("; ")
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    let ok = rows.iter().filter(|r| r.status == Status::Ok).count();
    text.push_str(&format!("{ok} of {} runs ok\n", rows.len()));
    text
}
