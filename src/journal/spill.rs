//! The spill directory: records the writer could not store before a shutdown are written
//! there as JSON lines, and read back at the next start. Its own module because it is a
//! file format of its own, outside the sled store.

use std::path::Path;

use bondline_devices::contract::Record;

/// The spill directory of the store at `path`: records that could not be stored before a
/// shutdown wait there for the next start.
pub fn spill_dir(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-spill");
    path.with_file_name(name)
}

/// Reads spilled records: every complete `*.jsonl` file in `dir`, oldest first. Lines that
/// do not parse are logged and skipped (they were written by this program; a torn last line
/// of a crash is the only expected case). A file that cannot be read at all is left out of
/// both lists (and so stays where it is, for the next start or an operator).
pub fn read_spill(dir: &Path) -> (Vec<std::path::PathBuf>, Vec<Record>) {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect(),
        Err(_) => return (Vec::new(), Vec::new()),
    };
    files.sort();
    let mut read = Vec::new();
    let mut records = Vec::new();
    for f in files {
        match std::fs::read(&f) {
            Ok(bytes) => {
                records.extend(parse(&f, &bytes));
                read.push(f);
            }
            Err(e) => {
                tracing::error!(file = %f.display(), error = %e, "spill file cannot be read; left in place")
            }
        }
    }
    (read, records)
}

/// The records of one spill file, as [`read_spill`] reads them (none if it cannot be read).
pub fn read_spill_file(file: &Path) -> Vec<Record> {
    std::fs::read(file)
        .map(|bytes| parse(file, &bytes))
        .unwrap_or_default()
}

fn parse(file: &Path, bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::error!(file = %file.display(), line = i + 1, error = %e, "unreadable spilled record")
            }
        }
    }
    records
}
