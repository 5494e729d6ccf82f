//! The raft log's redo journal: what makes a log operation durable with one small write.
//!
//! A durable redb commit writes its copy-on-write pages all over the file (the table's leaf and
//! branches, the freed-page records, the system tree, the header twice: about 30 KiB in eight
//! writes) before its `fdatasync`. With three members on one disk those flushes queue behind
//! each other on every write. So the log store commits to redb without an fsync and makes each
//! operation durable by appending it to this journal: one record, 4 KiB aligned, written
//! synchronously into a pre-zeroed file (no block allocation, no size change), the way etcd
//! appends to its preallocated WAL segments. Every so often the store commits redb durably (a
//! checkpoint) and the journal starts a new epoch; on open, the current epoch's records are
//! replayed into redb. redb stays the log's home: readers read it, and the journal only ever
//! holds what its last durable commit may lack.
//!
//! Layout: two superblocks (magic, epoch, crc) in blocks 0 and 1, written alternately so that a
//! write torn by a crash leaves the other readable (the higher valid epoch wins); records from
//! block 2 on: magic, crc, epoch, sequence number, payload length, payload. A record is valid
//! only whole (the crc covers epoch, sequence, length and payload) and only with the current
//! epoch and the next sequence number, so a torn last record, or an older epoch's records
//! further on, end the replay. Records never share a block, so writing one never rewrites a
//! block that holds an acknowledged record.
//!
//! Records and superblocks are written with `O_DIRECT | O_DSYNC` where the filesystem allows it
//! (one system call, no page-cache copy, and the kernel may use a FUA write instead of a write
//! plus a cache flush); elsewhere (tmpfs) through the page cache followed by `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const BLOCK: u64 = 4096;
const RECORDS_START: u64 = 2 * BLOCK;
/// The journal's size, zeroed when it is created.
pub const JOURNAL_BYTES: u64 = 4 << 20;

const SUPER_MAGIC: u64 = u64::from_le_bytes(*b"FERRYJSB");
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"FJRC");
/// magic u32, crc u32, epoch u64, seq u64, payload length u32.
const RECORD_HEADER: usize = 4 + 4 + 8 + 8 + 4;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The redo journal of one log store.
pub struct Journal {
    /// Buffered: recovery reads, zeroing, the lock; writes too where `direct` is unavailable.
    file: File,
    /// The same file opened `O_DIRECT | O_DSYNC`: each write is durable when it returns.
    direct: Option<File>,
    epoch: u64,
    seq: u64,
    /// Where the next record goes.
    pos: u64,
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, returning it with the payloads of the current
    /// epoch's records, oldest first. Apply those, make them durable elsewhere, then call
    /// `new_epoch` before appending. Fails if another process has the journal open.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Vec<u8>>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.try_lock().is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{}: in use by another process (is another ferry server using this data dir?)",
                    path.display()
                ),
            ));
        }
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
            .ok();
        let mut journal = Self {
            file,
            direct,
            epoch: 0,
            seq: 0,
            pos: RECORDS_START,
            buf: Vec::new(),
        };
        if journal.file.metadata()?.len() != JOURNAL_BYTES {
            // New, or cut short by a crash while being created (then it holds no record).
            journal.zero()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            return Ok((journal, Vec::new()));
        }
        let epochs = [journal.superblock(0)?, journal.superblock(1)?];
        let Some(epoch) = epochs.into_iter().flatten().max() else {
            return Ok((journal, Vec::new()));
        };
        journal.epoch = epoch;
        let mut payloads = Vec::new();
        let mut header = [0u8; RECORD_HEADER];
        let mut pos = RECORDS_START;
        while pos + RECORD_HEADER as u64 <= JOURNAL_BYTES {
            journal.file.read_exact_at(&mut header, pos)?;
            if u32_at(&header, 0) != RECORD_MAGIC
                || u64_at(&header, 8) != epoch
                || u64_at(&header, 16) != payloads.len() as u64
            {
                break;
            }
            let len = u32_at(&header, 24) as u64;
            if pos + RECORD_HEADER as u64 + len > JOURNAL_BYTES {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            journal
                .file
                .read_exact_at(&mut payload, pos + RECORD_HEADER as u64)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&header[8..]);
            crc.update(&payload);
            if crc.finalize() != u32_at(&header, 4) {
                break;
            }
            payloads.push(payload);
            pos += (RECORD_HEADER as u64 + len).div_ceil(BLOCK) * BLOCK;
        }
        Ok((journal, payloads))
    }

    fn zero(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < JOURNAL_BYTES {
            self.file.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        self.file.sync_all()
    }

    fn superblock(&self, slot: u64) -> io::Result<Option<u64>> {
        let mut b = [0u8; 20];
        self.file.read_exact_at(&mut b, slot * BLOCK)?;
        let valid = u64_at(&b, 0) == SUPER_MAGIC && u32_at(&b, 16) == crc32fast::hash(&b[..16]);
        Ok(valid.then(|| u64_at(&b, 8)))
    }

    /// Starts a new, empty epoch. Call it only once everything the journal holds is durable
    /// elsewhere: the records of the old epoch are gone.
    pub fn new_epoch(&mut self) -> io::Result<()> {
        let epoch = self.epoch + 1;
        let b = self.block_buf(BLOCK as usize);
        b.fill(0);
        b[..8].copy_from_slice(&SUPER_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&epoch.to_le_bytes());
        let crc = crc32fast::hash(&b[..16]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        self.write_durably(BLOCK as usize, (epoch % 2) * BLOCK)?;
        self.epoch = epoch;
        self.seq = 0;
        self.pos = RECORDS_START;
        Ok(())
    }

    /// The first `len` bytes of the write buffer, aligned for direct I/O.
    fn block_buf(&mut self, len: usize) -> &mut [u8] {
        let need = len + BLOCK as usize;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let start = self.buf.as_ptr().align_offset(BLOCK as usize);
        &mut self.buf[start..start + len]
    }

    /// Writes the first `len` bytes of the write buffer at `at` and makes them durable.
    fn write_durably(&mut self, len: usize, at: u64) -> io::Result<()> {
        let start = self.buf.as_ptr().align_offset(BLOCK as usize);
        let data = &self.buf[start..start + len];
        if let Some(direct) = &self.direct {
            match direct.write_all_at(data, at) {
                Ok(()) => return Ok(()),
                // Direct I/O refused after all: the page cache and fdatasync from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, at)?;
        self.file.sync_data()
    }

    /// Records in the current epoch.
    pub fn records(&self) -> u64 {
        self.seq
    }

    /// Whether a record of `len` payload bytes fits in what is left of the journal.
    pub fn fits(&self, len: usize) -> bool {
        self.pos + (RECORD_HEADER + len) as u64 <= JOURNAL_BYTES
    }

    /// Whether a record of `len` payload bytes fits in an empty journal.
    pub fn ever_fits(len: usize) -> bool {
        RECORDS_START + (RECORD_HEADER + len) as u64 <= JOURNAL_BYTES
    }

    /// Appends one record and makes it durable. The caller checked `fits`.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|_| self.fits(payload.len()))
            .ok_or_else(|| io::Error::other("journal record does not fit"))?;
        let size = RECORD_HEADER + payload.len();
        // Whole blocks (`fits` leaves room for them: the journal is whole blocks): what direct
        // I/O needs, and the page cache then never reads the rest of a block back first.
        let padded = (size as u64).div_ceil(BLOCK) * BLOCK;
        let write_len = padded as usize;
        let (epoch, seq) = (self.epoch, self.seq);
        let b = self.block_buf(write_len);
        b[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&epoch.to_le_bytes());
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b[24..28].copy_from_slice(&len.to_le_bytes());
        b[RECORD_HEADER..size].copy_from_slice(payload);
        b[size..].fill(0);
        let crc = crc32fast::hash(&b[8..size]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        self.write_durably(write_len, self.pos)?;
        self.seq += 1;
        self.pos += padded;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_until_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert!(replay.is_empty());
        j.new_epoch().unwrap();
        j.append(b"one").unwrap();
        j.append(&vec![7u8; 5000]).unwrap();
        j.append(b"").unwrap();
        drop(j);
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay, vec![b"one".to_vec(), vec![7u8; 5000], Vec::new()]);
        j.new_epoch().unwrap();
        j.append(b"two").unwrap();
        drop(j);
        // The new epoch's record only; the old epoch's second and third records further on in
        // the file are not the new epoch's.
        let (j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay, vec![b"two".to_vec()]);
        drop(j);
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.new_epoch().unwrap();
        j.append(b"kept").unwrap();
        j.append(b"torn").unwrap();
        j.append(b"after").unwrap();
        drop(j);
        // Flip a payload byte of the second record.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", RECORDS_START + BLOCK + RECORD_HEADER as u64)
            .unwrap();
        drop(f);
        let (_, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay, vec![b"kept".to_vec()]);
    }

    #[test]
    fn a_torn_superblock_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.new_epoch().unwrap(); // epoch 1, slot 1
        j.new_epoch().unwrap(); // epoch 2, slot 0
        j.new_epoch().unwrap(); // epoch 3, slot 1
        j.append(b"a").unwrap();
        drop(j);
        // A crash while writing epoch 4's superblock over epoch 2's (slot 0): magic and epoch
        // landed, the checksum did not. Epoch 3 is still the current one: replay it again.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let mut torn = [0u8; 20];
        torn[..8].copy_from_slice(&SUPER_MAGIC.to_le_bytes());
        torn[8..16].copy_from_slice(&4u64.to_le_bytes());
        f.write_all_at(&torn, 0).unwrap();
        drop(f);
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay, vec![b"a".to_vec()]);
        j.new_epoch().unwrap();
        drop(j);
        let (_, replay) = Journal::open(&path).unwrap();
        assert!(replay.is_empty());
    }

    #[test]
    fn a_full_journal_refuses_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(&dir.path().join("j")).unwrap();
        j.new_epoch().unwrap();
        let big = vec![1u8; (JOURNAL_BYTES / 2) as usize];
        assert!(j.fits(big.len()));
        j.append(&big).unwrap();
        assert!(!j.fits(big.len()));
        assert!(j.append(&big).is_err());
        assert!(!Journal::ever_fits(JOURNAL_BYTES as usize));
    }

    #[test]
    fn a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (_j, _) = Journal::open(&path).unwrap();
        let err = Journal::open(&path).err().expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
    }
}
