//! The outbox: usage batches waiting for the control plane's ack, oldest first. With a
//! directory, each batch is written to its own file (written, synced, then renamed into
//! place) before it counts as queued, and deleted only once acknowledged, so a batch
//! survives a restart or a crash and is delivered afterwards with its original
//! `(node_id, boot_id, seq)`; the control plane's dedup on that triple makes a batch
//! delivered twice (acked, then the process died before the delete) count once.

use std::{
    collections::VecDeque,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use prost::Message;
use sidecar_proto::v1 as pb;
use tokio::sync::Notify;
use tracing::warn;

const SUFFIX: &str = ".batch";
const TMP_SUFFIX: &str = ".batch.tmp";

struct Entry {
    /// Position in the outbox across restarts; the file name.
    index: u64,
    batch: pb::ReportBatch,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    next_index: u64,
}

/// Batches waiting for an ack, oldest first.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Where batches are kept; `None` keeps them in memory only.
    dir: Option<PathBuf>,
    pub(super) ready: Notify,
}

/// What [`Outbox::open`] found on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Batches a previous run left undelivered, now queued again.
    pub batches: usize,
    /// Files that could not be read as a batch (deleted).
    pub unreadable: usize,
}

fn file_name(index: u64) -> String {
    format!("{index:020}{SUFFIX}")
}

impl Outbox {
    /// An outbox kept in `dir`, with the batches a previous run left there queued first
    /// (at most `capacity`, the newest kept). Half-written files are removed.
    pub fn open(dir: &Path, capacity: usize) -> std::io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        let mut recovered = Recovered::default();
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(TMP_SUFFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(index) = name.strip_suffix(SUFFIX).and_then(|i| i.parse::<u64>().ok()) else { continue };
            match fs::read(&path).ok().and_then(|bytes| pb::ReportBatch::decode(bytes.as_slice()).ok()) {
                Some(batch) if batch.seq > 0 && !batch.boot_id.is_empty() => found.push(Entry { index, batch }),
                _ => {
                    warn!(file = %path.display(), "usage outbox: a file is not a readable batch; removing it");
                    recovered.unreadable += 1;
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|e| e.index);
        let next_index = found.last().map_or(0, |e| e.index + 1);
        let outbox = Self {
            queue: Mutex::new(Queue { entries: found.into(), next_index }),
            dir: Some(dir.to_path_buf()),
            ready: Notify::new(),
        };
        outbox.trim(capacity);
        recovered.batches = outbox.len();
        Ok((outbox, recovered))
    }

    /// Queues `batch` (on disk first, when the outbox has a directory), then drops the
    /// oldest batches beyond `capacity`. Returns how many were dropped.
    pub fn push(&self, batch: pb::ReportBatch, capacity: usize) -> u64 {
        let index = {
            let mut q = self.queue.lock().expect("outbox lock");
            q.next_index += 1;
            q.next_index - 1
        };
        if let Some(dir) = &self.dir
            && let Err(e) = write_synced(dir, index, &batch.encode_to_vec())
        {
            // Still queued in memory: delivered if this process lives long enough.
            warn!(error = %e, dir = %dir.display(), "usage outbox: could not persist a batch");
        }
        self.queue.lock().expect("outbox lock").entries.push_back(Entry { index, batch });
        let dropped = self.trim(capacity);
        self.ready.notify_one();
        dropped
    }

    fn trim(&self, capacity: usize) -> u64 {
        let mut removed = Vec::new();
        {
            let mut q = self.queue.lock().expect("outbox lock");
            while q.entries.len() > capacity {
                removed.extend(q.entries.pop_front().map(|e| e.index));
            }
        }
        for index in &removed {
            self.remove_file(*index);
        }
        removed.len() as u64
    }

    /// The oldest batch, if any.
    pub fn front(&self) -> Option<pb::ReportBatch> {
        self.queue.lock().expect("outbox lock").entries.front().map(|e| e.batch.clone())
    }

    /// Removes `batch` if it is still the oldest (it may have been dropped meanwhile):
    /// the control plane acknowledged it, or refused it for good.
    pub fn remove(&self, batch: &pb::ReportBatch) {
        let index = {
            let mut q = self.queue.lock().expect("outbox lock");
            let head = q.entries.front().filter(|e| e.batch.seq == batch.seq && e.batch.boot_id == batch.boot_id);
            let Some(index) = head.map(|e| e.index) else { return };
            q.entries.pop_front();
            index
        };
        self.remove_file(index);
    }

    fn remove_file(&self, index: u64) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_file(dir.join(file_name(index)));
        }
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock").entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches waiting, oldest first.
    pub fn batches(&self) -> Vec<pb::ReportBatch> {
        self.queue.lock().expect("outbox lock").entries.iter().map(|e| e.batch.clone()).collect()
    }
}

/// Writes `bytes` as batch `index`: to a temporary file, synced, renamed into place, and
/// the directory synced, so a crash leaves either the whole batch or no batch.
fn write_synced(dir: &Path, index: u64, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{index:020}{TMP_SUFFIX}"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(file_name(index)))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(boot: &str, seq: u64) -> pb::ReportBatch {
        pb::ReportBatch {
            node_id: "n".into(),
            boot_id: boot.into(),
            seq,
            records: vec![pb::UsageRecord { answered: seq, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn batches_survive_a_restart_in_order_with_their_identity_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, found) = Outbox::open(dir.path(), 10).unwrap();
        assert_eq!(found, Recovered::default());
        for seq in 1..=3 {
            outbox.push(batch("boot-a", seq), 10);
        }
        outbox.remove(&batch("boot-a", 1));
        drop(outbox);

        let (outbox, found) = Outbox::open(dir.path(), 10).unwrap();
        assert_eq!(found.batches, 2);
        assert_eq!(outbox.front().unwrap(), batch("boot-a", 2), "the original node, boot and seq");
        outbox.push(batch("boot-b", 1), 10);
        let order: Vec<_> = outbox.batches().iter().map(|b| (b.boot_id.clone(), b.seq)).collect();
        assert_eq!(order, [("boot-a".into(), 2), ("boot-a".into(), 3), ("boot-b".into(), 1)]);
        for b in outbox.batches() {
            outbox.remove(&b);
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "acknowledged batches leave no file");
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_on_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), 2).unwrap();
        assert_eq!(outbox.push(batch("b", 1), 2), 0);
        assert_eq!(outbox.push(batch("b", 2), 2), 0);
        assert_eq!(outbox.push(batch("b", 3), 2), 1);
        drop(outbox);
        let (outbox, _) = Outbox::open(dir.path(), 2).unwrap();
        assert_eq!(outbox.batches().iter().map(|b| b.seq).collect::<Vec<_>>(), [2, 3]);
        // A smaller capacity after a restart keeps the newest.
        let (outbox2, found) = Outbox::open(dir.path(), 1).unwrap();
        drop(outbox);
        assert_eq!((found.batches, outbox2.front().unwrap().seq), (1, 3));
    }

    #[test]
    fn half_written_and_unreadable_files_are_removed_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{:020}{TMP_SUFFIX}", 0)), b"half").unwrap();
        fs::write(dir.path().join(file_name(1)), b"\xff\xff\xff not protobuf").unwrap();
        fs::write(dir.path().join(file_name(2)), batch("b", 7).encode_to_vec()).unwrap();
        let (outbox, found) = Outbox::open(dir.path(), 10).unwrap();
        assert_eq!(found, Recovered { batches: 1, unreadable: 1 });
        assert_eq!(outbox.front().unwrap().seq, 7);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // New batches go after the recovered ones.
        outbox.push(batch("c", 1), 10);
        assert_eq!(outbox.batches().last().unwrap().boot_id, "c");
    }

    #[test]
    fn a_batch_removed_after_it_was_dropped_does_not_remove_another() {
        let outbox = Outbox::default();
        outbox.push(batch("b", 1), 1);
        outbox.push(batch("b", 2), 1);
        outbox.remove(&batch("b", 1));
        assert_eq!(outbox.front().unwrap().seq, 2);
    }
}
