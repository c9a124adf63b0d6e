//! Streaming I/O on any backend: [`writer::Writer`] (part buffers uploaded concurrently while the
//! caller writes; nothing published until close) and [`reader::Reader`] (seekable, with
//! readahead through concurrent ranged GETs). The Python file objects of `s3dlio.open` wrap them.

pub mod reader;
pub mod writer;

pub use reader::{Fetcher, Reader, ReaderOptions};
pub use writer::{crc32c, crc32c_combine, Writer, WriterOptions, Written};
