//! The streaming writer and reader against the local backend (file://): byte-exact round trips,
//! part accounting, readahead across chunk boundaries, random seeks and large direct reads.
#![allow(clippy::unwrap_used)]

use s3dlio_core::io::{crc32c, Reader, ReaderOptions, Writer, WriterOptions};
use s3dlio_core::options::RangeEngineConfig;
use s3dlio_core::runtime::context;
use s3dlio_core::StoreConfig;

const MIB: usize = 1024 * 1024;

fn payload(n: usize) -> Vec<u8> {
    // A cheap deterministic non-repeating pattern (xorshift).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("s3dlio-io-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn writer_then_reader_round_trip() {
    let ctx = context().unwrap();
    let d = dir("rt");
    let uri = format!("file://{}/obj.bin", d.display());
    let data = payload(12 * MIB + 3);
    let cfg = StoreConfig::default();
    ctx.runtime().block_on(async {
        let opts = WriterOptions { part_size: 5 * MIB as u64, max_parts_in_flight: 2, fsync: false };
        let mut w = Writer::create(&uri, &cfg, opts).await.unwrap();
        for piece in data.chunks(777_777) {
            w.write(piece).await.unwrap();
        }
        let done = w.close().await.unwrap();
        // A local file is written in place (no parts).
        assert_eq!((done.size, done.parts, done.crc32c), (data.len() as u64, 0, crc32c(&data, 0)));
        // Nothing but the object in the directory: the temp file was renamed into place.
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("obj.bin")]);
        assert_eq!(std::fs::read(d.join("obj.bin")).unwrap(), data);

        let range = RangeEngineConfig { chunk_size: 64 * 1024, ..Default::default() };
        let mut r = Reader::open(&uri, &cfg, ReaderOptions { range, readahead: 3 }, None).await.unwrap();
        assert_eq!(r.size(), data.len() as u64);
        // Sequential reads of odd sizes across chunk boundaries.
        let mut got = vec![0u8; 1_000_001];
        assert_eq!(r.read(&mut got).await.unwrap(), got.len());
        assert_eq!(got, data[..got.len()]);
        // Random seeks, small and large (direct) reads.
        for (at, n) in [(5usize, 10usize), (7 * MIB, 3 * MIB), (100, 200_000), (12 * MIB, 10), (0, 1)] {
            r.seek(at as u64);
            let mut buf = vec![0u8; n];
            let got = r.read(&mut buf).await.unwrap();
            let want = &data[at..(at + n).min(data.len())];
            assert_eq!(&buf[..got], want, "at {at} n {n}");
        }
        // Past the end: nothing.
        r.seek(data.len() as u64 + 10);
        assert_eq!(r.read(&mut [0u8; 4]).await.unwrap(), 0);
    });
}

#[test]
fn an_aborted_or_dropped_writer_publishes_nothing() {
    let ctx = context().unwrap();
    let d = dir("abort");
    let uri = format!("file://{}/obj.bin", d.display());
    std::fs::write(d.join("obj.bin"), b"previous").unwrap();
    let cfg = StoreConfig::default();
    ctx.runtime().block_on(async {
        let opts = WriterOptions { part_size: 5 * MIB as u64, max_parts_in_flight: 2, fsync: false };
        let mut w = Writer::create(&uri, &cfg, opts).await.unwrap();
        w.write(&payload(11 * MIB)).await.unwrap();
        w.abort().await.unwrap();
        let mut w = Writer::create(&uri, &cfg, opts).await.unwrap();
        w.write(&payload(11 * MIB)).await.unwrap();
        drop(w);
        assert!(ctx.wait_cleanup(std::time::Duration::from_secs(5)).await);
    });
    let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("obj.bin")]);
    assert_eq!(std::fs::read(d.join("obj.bin")).unwrap(), b"previous");
}
