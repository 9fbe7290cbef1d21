//! Printing: aligned tables for lists, `key: value` lines for single objects, pretty
//! JSON for scripts, and the small formatters (timestamps, limits) they share.

use std::{
    fmt,
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;
use sidecar_proto::v1 as pb;

/// Columns of text printed with every column padded to its widest cell.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self { header: header.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; it must have one cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    /// Renders the table, two spaces between columns and no trailing blanks.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = w - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub(crate) fn print(&self) -> io::Result<()> {
        io::stdout().write_all(self.render().as_bytes())
    }
}

/// Renders `key: value` lines with the values aligned.
pub(crate) fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in fields {
        let key = format!("{key}:");
        out.push_str(format!("{key:<w$} {value}", w = width + 1).trim_end());
        out.push('\n');
    }
    out
}

/// Prints `key: value` lines to stdout.
pub(crate) fn print_fields(fields: &[(&str, String)]) -> io::Result<()> {
    io::stdout().write_all(render_fields(fields).as_bytes())
}

/// Prints one line of text to stdout.
pub(crate) fn line(text: impl fmt::Display) -> anyhow::Result<()> {
    writeln!(io::stdout(), "{text}")?;
    Ok(())
}

/// Prints a message as pretty JSON to stdout.
pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    // As an io::Error, so that a closed pipe is recognised as one.
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// A unix-milliseconds timestamp as RFC 3339 (UTC, whole seconds); 0 or less is "-".
pub(crate) fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        _ => "-".to_owned(),
    }
}

/// A number where 0 means "none" or "unset".
pub(crate) fn or_dash(n: impl Into<u64>) -> String {
    match n.into() {
        0 => "-".to_owned(),
        n => n.to_string(),
    }
}

/// A list joined with commas, or `empty` when there is nothing in it.
pub(crate) fn list<S: AsRef<str>>(items: &[S], empty: &str) -> String {
    if items.is_empty() {
        return empty.to_owned();
    }
    items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(",")
}

/// Keeps table cells on one line: control characters (newlines in error texts) become spaces.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// A token role as people read it.
pub(crate) fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Admin) => "admin",
        Ok(pb::Role::Viewer) => "viewer",
        Ok(pb::Role::Node) => "node",
        _ => "unknown",
    }
}

/// A backend's runtime status as people read it.
pub(crate) fn status_name(status: i32) -> &'static str {
    match pb::BackendStatus::try_from(status) {
        Ok(pb::BackendStatus::Healthy) => "healthy",
        Ok(pb::BackendStatus::Cooling) => "cooling",
        Ok(pb::BackendStatus::Error) => "error",
        Ok(pb::BackendStatus::Disabled) => "disabled",
        _ => "unknown",
    }
}

/// Where a backend was created, as people read it.
pub(crate) fn source_name(source: i32) -> &'static str {
    match pb::BackendSource::try_from(source) {
        Ok(pb::BackendSource::Console) => "console",
        Ok(pb::BackendSource::Api) => "api",
        Ok(pb::BackendSource::Env) => "env",
        Ok(pb::BackendSource::Import) => "import",
        _ => "unknown",
    }
}

/// The API a backend speaks, as people read it (unset is OpenAI).
pub(crate) fn api_name(api: i32) -> &'static str {
    match pb::BackendApi::try_from(api) {
        Ok(pb::BackendApi::Anthropic) => "anthropic",
        Ok(pb::BackendApi::Openai | pb::BackendApi::Unspecified) => "openai",
        Err(_) => "unknown",
    }
}

/// A statistics granularity as people read it.
pub(crate) fn granularity_name(granularity: i32) -> &'static str {
    match pb::Granularity::try_from(granularity) {
        Ok(pb::Granularity::Minute) => "minute",
        Ok(pb::Granularity::Hour) => "hour",
        Ok(pb::Granularity::Day) => "day",
        _ => "auto",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME", "URL"]);
        t.row(vec!["b1".into(), "a-long-name".into(), "http://x".into()]);
        t.row(vec!["bkd_2".into(), "n".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID     NAME         URL\n\
             b1     a-long-name  http://x\n\
             bkd_2  n\n"
        );
    }

    #[test]
    fn table_cells_stay_on_one_line() {
        let mut t = Table::new(&["ERR"]);
        t.row(vec!["bad\nthing".into()]);
        assert_eq!(t.render(), "ERR\nbad thing\n");
    }

    #[test]
    fn fields_align_their_values() {
        assert_eq!(render_fields(&[("id", "b1".into()), ("rpm_limit", "40".into())]), "id:        b1\nrpm_limit: 40\n");
    }

    #[test]
    fn timestamps_are_rfc3339_and_zero_is_a_dash() {
        assert_eq!(time(0), "-");
        assert_eq!(time(-5), "-");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
