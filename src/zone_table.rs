//! The per-zone series (`argo_enabled`, `argo_editable`, …), kept as one
//! compact row per zone and written straight into the exposition text.
//!
//! With the `prometheus` crate's vectors every series is an object of its
//! own holding its label pairs as separate strings: at 10,000 zones and
//! 11 series each, that was most of the exporter's memory. Here a zone is
//! one small struct; encoding locks each row only while writing its line,
//! so polls never wait for a scrape to finish.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// What the last polls said about one zone; `None` means "no series".
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub enabled: Option<bool>,
    pub editable: Option<bool>,
    pub entitled: Option<bool>,
    pub expected: Option<bool>,
    pub last_modified: Option<f64>,
    pub poll_success: Option<bool>,
    pub last_success: Option<f64>,
    /// Changes seen, to on and to off.
    pub changes: Option<[u64; 2]>,
}

type Value = fn(&Row) -> Option<f64>;

/// The gauge families, in the order they are written.
const GAUGES: &[(&str, &str, Value)] = &[
    (
        "argo_enabled",
        "1 if Argo Smart Routing is on for the zone, 0 if off, as of the last successful poll.",
        |row| row.enabled.map(f64::from),
    ),
    (
        "argo_editable",
        "1 if the Argo Smart Routing setting can be changed through the API, as of the last \
         successful poll.",
        |row| row.editable.map(f64::from),
    ),
    (
        "argo_zone_entitled",
        "1 if the zone's plan includes Argo Smart Routing, 0 if Cloudflare answered that it \
         does not (code 1015), as of the last poll.",
        |row| row.entitled.map(f64::from),
    ),
    (
        "argo_expected_enabled",
        "1 if Argo Smart Routing is expected on for the zone, 0 if expected off; absent when \
         either is fine.",
        |row| row.expected.map(f64::from),
    ),
    (
        "argo_last_modified_timestamp",
        "Unix time in seconds of the last change to Argo Smart Routing, as of the last \
         successful poll; absent when Cloudflare does not say.",
        |row| row.last_modified,
    ),
    (
        "argo_zone_poll_success",
        "1 if the last poll of the zone succeeded, 0 if it failed.",
        |row| row.poll_success.map(f64::from),
    ),
    (
        "argo_zone_last_success_timestamp_seconds",
        "Unix time in seconds of the last successful poll of the zone.",
        |row| row.last_success,
    ),
];

const CHANGES: (&str, &str) = (
    "argo_state_changes_total",
    "Changes of Argo Smart Routing seen between two successful polls, by the state changed to.",
);

/// Every zone's row, by zone ID.
#[derive(Default)]
pub struct ZoneTable {
    rows: RwLock<BTreeMap<String, Arc<Mutex<Row>>>>,
}

impl ZoneTable {
    /// Changes the zone's row (creating it), keeping its name current.
    pub fn update(&self, id: &str, name: &str, change: impl FnOnce(&mut Row)) {
        let existing = self.read().get(id).cloned();
        let row = existing.unwrap_or_else(|| {
            let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
            let row = rows.entry(id.to_owned()).or_insert_with(|| {
                Arc::new(Mutex::new(Row {
                    id: id.to_owned(),
                    ..Row::default()
                }))
            });
            Arc::clone(row)
        });
        let mut row = lock(&row);
        if row.name != name {
            name.clone_into(&mut row.name);
        }
        change(&mut row);
    }

    /// Drops the zone and all its series.
    pub fn remove(&self, id: &str) {
        self.rows
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// A copy of the zone's row, for tests and checks.
    pub fn row(&self, id: &str) -> Option<Row> {
        self.read().get(id).map(|row| lock(row).clone())
    }

    /// Appends every zone series in the text exposition format.
    pub fn encode_into<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        // Only the list of rows is copied under the table's lock.
        let rows: Vec<Arc<Mutex<Row>>> = self.read().values().cloned().collect();
        for (name, help, value) in GAUGES {
            let mut header = Some((*name, *help, "gauge"));
            for row in &rows {
                let row = lock(row);
                if let Some(value) = value(&row) {
                    write_header(out, &mut header)?;
                    write!(out, "{name}{{zone_id=\"")?;
                    escape(out, &row.id)?;
                    out.write_all(b"\",zone_name=\"")?;
                    escape(out, &row.name)?;
                    writeln!(out, "\"}} {value}")?;
                }
            }
        }
        let (name, help) = CHANGES;
        let mut header = Some((name, help, "counter"));
        for row in &rows {
            let row = lock(row);
            if let Some(counts) = row.changes {
                write_header(out, &mut header)?;
                for (to, count) in ["on", "off"].into_iter().zip(counts) {
                    write!(out, "{name}{{to=\"{to}\",zone_id=\"")?;
                    escape(out, &row.id)?;
                    out.write_all(b"\",zone_name=\"")?;
                    escape(out, &row.name)?;
                    writeln!(out, "\"}} {count}")?;
                }
            }
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Mutex<Row>>>> {
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock(row: &Mutex<Row>) -> MutexGuard<'_, Row> {
    // A row is a plain value: one left by a panic is still a row.
    row.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes a family's HELP and TYPE before its first sample, once.
fn write_header<W: Write>(
    out: &mut W,
    header: &mut Option<(&str, &str, &str)>,
) -> std::io::Result<()> {
    if let Some((name, help, kind)) = header.take() {
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} {kind}")?;
    }
    Ok(())
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape<W: Write>(out: &mut W, value: &str) -> std::io::Result<()> {
    if !value.contains(['\\', '"', '\n']) {
        return out.write_all(value.as_bytes());
    }
    for c in value.chars() {
        match c {
            '\\' => out.write_all(b"\\\\")?,
            '"' => out.write_all(b"\\\"")?,
            '\n' => out.write_all(b"\\n")?,
            c => write!(out, "{c}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(table: &ZoneTable) -> String {
        let mut out = Vec::new();
        table.encode_into(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn families_appear_only_with_a_series() {
        let table = ZoneTable::default();
        assert_eq!(text(&table), "");
        table.update("a1", "a.example.com", |row| row.poll_success = Some(false));
        assert_eq!(
            text(&table),
            "# HELP argo_zone_poll_success 1 if the last poll of the zone succeeded, 0 if it \
             failed.\n# TYPE argo_zone_poll_success gauge\n\
             argo_zone_poll_success{zone_id=\"a1\",zone_name=\"a.example.com\"} 0\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let table = ZoneTable::default();
        table.update("a1", "odd\"na\\me\n", |row| row.enabled = Some(true));
        assert!(text(&table).contains(r#"argo_enabled{zone_id="a1",zone_name="odd\"na\\me\n"} 1"#));
    }

    #[test]
    fn renames_and_removals() {
        let table = ZoneTable::default();
        table.update("a1", "", |row| row.changes = Some([0, 1]));
        table.update("a1", "a.example.com", |_| {});
        let text_now = text(&table);
        assert!(text_now.contains(
            r#"argo_state_changes_total{to="off",zone_id="a1",zone_name="a.example.com"} 1"#
        ));
        assert!(!text_now.contains(r#"zone_name="""#));
        table.remove("a1");
        assert_eq!(text(&table), "");
    }
}
