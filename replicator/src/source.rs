//! Reading a file from the pocket for upload: data extents (holes stay holes), content-defined
//! chunks, and the check that the file did not change while it was read.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

use crate::error::{Error, Result};
use crate::format::{ChunkRef, ChunkerParams, Content, Extent, VMeta};

/// Files up to this size are read whole and cut in memory; larger ones are streamed.
const WHOLE_READ: u64 = 32 << 20;

/// What a read found.
#[derive(Debug)]
pub enum ReadOutcome {
    /// The contents, and the metadata they go with.
    Done(Content, VMeta),
    /// The file is gone or is another file now (its inode differs).
    Gone,
    /// It changed while being read; read it again.
    Torn,
}

/// The chunker's settings for one vault.
#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    pub params: ChunkerParams,
    /// XORed into FastCDC's gear table, derived from the vault key, so chunk boundaries do not
    /// reveal which known files a vault holds.
    pub seed: u64,
}

/// Reads `path` (which should be the journal's file `id`, as `ids` tell) and hands each chunk
/// to `sink`.
pub fn read_file(
    path: &Path,
    id: u64,
    ids: &journal::DriveIds,
    chunker: &Chunker,
    sink: &mut dyn FnMut(&[u8]) -> Result<ChunkRef>,
) -> Result<ReadOutcome> {
    let file = match crate::os::open_source(path) {
        Ok(f) => f,
        Err(e) if crate::os::is_gone(&e) => return Ok(ReadOutcome::Gone),
        Err(e) => {
            return Err(Error::Source {
                path: path.to_owned(),
                detail: format!("cannot read: {e}"),
            })
        }
    };
    let before = file.metadata().map_err(|e| src_err(path, e))?;
    let number = crate::os::file_id(&file, &before).map_err(|e| src_err(path, e))?;
    if !ids.may_be(number, id) || !before.is_file() {
        return Ok(ReadOutcome::Gone);
    }
    let size = before.len();
    let extents = crate::os::data_extents(&file, size).map_err(|e| src_err(path, e))?;
    let mut out = Vec::with_capacity(extents.len());
    for (start, end) in extents {
        let mut chunks = Vec::new();
        cut(&file, start, end, size, chunker, &mut |c| {
            chunks.push(sink(c)?);
            Ok(())
        })
        .map_err(|e| match e {
            Error::Io { source, .. } => src_err(path, source),
            e => e,
        })?;
        out.push(Extent {
            offset: start,
            chunks,
        });
    }
    let after = file.metadata().map_err(|e| src_err(path, e))?;
    if crate::os::changed(&before, &after) {
        return Ok(ReadOutcome::Torn);
    }
    let meta = journal::Meta::from_std(&after)
        .map(VMeta::from)
        .ok_or_else(|| Error::Source {
            path: path.to_owned(),
            detail: "unknown file type".into(),
        })?;
    Ok(ReadOutcome::Done(Content { size, extents: out }, meta))
}

fn src_err(path: &Path, e: std::io::Error) -> Error {
    Error::Source {
        path: path.to_owned(),
        detail: format!("cannot read: {e}"),
    }
}

/// Cuts bytes `start..end` of `file` into chunks.
fn cut(
    file: &File,
    start: u64,
    end: u64,
    file_size: u64,
    chunker: &Chunker,
    emit: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let (min, avg, max) = chunker.params.for_size(file_size);
    let len = end - start;
    let io = |e: std::io::Error| Error::Io {
        context: "read".into(),
        source: e,
    };
    if len <= WHOLE_READ {
        let mut buf = vec![0u8; len as usize];
        read_exact_at(file, &mut buf, start).map_err(io)?;
        if len < min as u64 {
            return emit(&buf);
        }
        let cdc = FastCDC::with_level_and_seed(
            &buf,
            min as usize,
            avg as usize,
            max as usize,
            Normalization::Level1,
            chunker.seed,
        );
        for c in cdc {
            emit(&buf[c.offset..c.offset + c.length])?;
        }
        return Ok(());
    }
    let reader = Ranged {
        file,
        pos: start,
        end,
    };
    let cdc = StreamCDC::with_level_and_seed(
        reader,
        min as usize,
        avg as usize,
        max as usize,
        Normalization::Level1,
        chunker.seed,
    );
    for c in cdc {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => io(e),
            e => Error::Format(format!("chunking: {e}")),
        })?;
        emit(&c.data)?;
    }
    Ok(())
}

struct Ranged<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Ranged<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = crate::os::read_at(self.file, &mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut pos: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match crate::os::read_at(file, buf, pos)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A file replaced by a fifo before the drain reads it: opening the fifo to read would
    /// wait for a writer forever, and with it the whole destination (found by the truth test:
    /// the vault stopped draining, nothing in its status said why).
    #[cfg(unix)]
    #[test]
    fn a_path_that_became_a_fifo_is_passed_over_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("was-a-file");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let chunker = Chunker {
            params: ChunkerParams::default(),
            seed: 1,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let mut sink = |_: &[u8]| -> Result<ChunkRef> { unreachable!("a fifo has no chunks") };
            let r = read_file(&p, 1, &journal::DriveIds::default(), &chunker, &mut sink);
            let _ = tx.send(r.map(|o| matches!(o, ReadOutcome::Gone)));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        // Let a hung reader go (a writer's open releases it) before failing.
        if got.is_err() {
            let _ = std::fs::OpenOptions::new().write(true).open(&path);
        }
        assert!(matches!(got, Ok(Ok(true))), "{got:?}");
    }

    #[test]
    fn a_file_written_while_read_is_never_taken_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing");
        std::fs::write(&path, vec![7u8; 8 << 20]).unwrap();
        let f = File::open(&path).unwrap();
        let id = crate::os::file_id(&f, &f.metadata().unwrap()).unwrap();
        let stop = AtomicBool::new(false);
        let chunker = Chunker {
            params: ChunkerParams::default(),
            seed: 1,
        };
        let (mut torn, mut done) = (0, 0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::io::Write::write_all(&mut &f, &[1u8; 4096]).unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            });
            for _ in 0..20 {
                let mut total = 0u64;
                let mut sink = |c: &[u8]| {
                    total += c.len() as u64;
                    Ok(ChunkRef {
                        id: [0; 32],
                        len: c.len() as u32,
                    })
                };
                match read_file(
                    &path,
                    id,
                    &journal::DriveIds::default(),
                    &chunker,
                    &mut sink,
                )
                .unwrap()
                {
                    ReadOutcome::Torn => torn += 1,
                    ReadOutcome::Done(c, m) => {
                        done += 1;
                        // What was taken is exactly the size it claims.
                        assert_eq!(c.data_bytes(), c.size);
                        assert_eq!(total, c.size);
                        assert_eq!(m.size, c.size);
                    }
                    ReadOutcome::Gone => panic!("the file is there"),
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(
            torn > 0,
            "appends during the read were noticed ({done} clean reads)"
        );
    }
}
