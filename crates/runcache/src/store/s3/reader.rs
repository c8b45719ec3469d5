//! Streaming one blob, resuming with ranged GETs when the connection breaks.

use std::io::{self, Read};
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use object_store::{GetOptions, GetRange, ObjectStore};

use super::client::Client;

/// How often a blob download resumes (ranged GET from where it broke) before giving up.
const DOWNLOAD_RESUMES: usize = 3;

/// Streams one blob, resuming with a ranged GET (pinned to the same etag) when the connection
/// breaks mid-download.
pub(super) struct S3Reader {
    pub(super) client: Arc<Client>,
    pub(super) rel: String,
    pub(super) etag: Option<String>,
    pub(super) size: u64,
    pub(super) offset: u64,
    pub(super) stream: Option<BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    pub(super) chunk: Vec<u8>,
    pub(super) pos: usize,
    pub(super) resumes: usize,
}

impl S3Reader {
    pub(super) fn next_chunk(&mut self) -> io::Result<bool> {
        loop {
            if self.offset >= self.size {
                return Ok(false);
            }
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let opts = GetOptions {
                        range: Some(GetRange::Offset(self.offset)),
                        if_match: self.etag.clone(),
                        ..Default::default()
                    };
                    let path = self.client.path(&self.rel);
                    let r = self
                        .client
                        .block_on(self.client.store.get_opts(&path, opts))
                        .map_err(|e| io::Error::other(self.client.fail("GET", &self.rel, e)))?;
                    self.stream.insert(r.into_stream())
                }
            };
            match self.client.block_on(stream.next()) {
                Some(Ok(bytes)) => {
                    self.offset += bytes.len() as u64;
                    self.chunk.clear();
                    self.chunk.extend_from_slice(&bytes);
                    self.pos = 0;
                    return Ok(true);
                }
                // The server ended the body early: resume from where it stopped.
                None => {
                    self.stream = None;
                    self.resumes += 1;
                    if self.resumes > DOWNLOAD_RESUMES {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "{}: the download ended at byte {} of {}",
                                self.client.url(&self.rel),
                                self.offset,
                                self.size
                            ),
                        ));
                    }
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.resumes += 1;
                    if self.resumes > DOWNLOAD_RESUMES {
                        return Err(io::Error::other(self.client.fail("GET", &self.rel, e)));
                    }
                    log::debug!("resuming the download of {} after: {e}", self.rel);
                }
            }
        }
    }
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.chunk.len() && !self.next_chunk()? {
            return Ok(0);
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
