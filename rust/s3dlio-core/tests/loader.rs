//! BatchLoader and cancellation, on real data (files written by the test, read through file://).
//! Each test checks what was delivered and bounds how many requests started after a cancel.

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a test failure

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use s3dlio_core::loader::{BatchLoader, Source};
use s3dlio_core::options::{LoaderOptions, OnError, PoolConfig, RangeEngineConfig};
use s3dlio_core::runtime::context;
use s3dlio_core::{CancellationToken, ErrorKind, StoreConfig};

struct Dataset {
    dir: PathBuf,
    source: Arc<Source>,
}

impl Drop for Dataset {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` files whose content encodes their index, so every delivered byte can be checked.
fn dataset(tag: &str, n: usize, missing: &[usize]) -> Dataset {
    let dir = std::env::temp_dir().join(format!("s3dlio-loader-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut uris = Vec::new();
    for i in 0..n {
        let p = dir.join(format!("{i:06}.bin"));
        if !missing.contains(&i) {
            std::fs::write(&p, content(i as u64)).unwrap();
        }
        uris.push(format!("file://{}", p.display()));
    }
    Dataset { dir, source: Arc::new(Source::new(uris, None).unwrap()) }
}

fn content(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(4096, (i % 251) as u8);
    v
}

fn opts(batch_size: usize) -> LoaderOptions {
    LoaderOptions { batch_size, ..Default::default() }
}

fn start(
    d: &Dataset,
    order: Vec<u64>,
    o: &LoaderOptions,
    pool_size: usize,
    parent: Option<&CancellationToken>,
) -> BatchLoader {
    let pool = PoolConfig {
        pool_size,
        readahead_batches: 2,
        request_timeout: None,
        adaptive: true,
        min_pool_size: 1,
        pushback_timeout: std::time::Duration::from_secs(60),
        max_bytes: None,
    };
    BatchLoader::start(
        context().unwrap(),
        Arc::clone(&d.source),
        order,
        o,
        &pool,
        &RangeEngineConfig::default(),
        &StoreConfig::default(),
        parent,
        None,
    )
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    context().unwrap().runtime().block_on(f)
}

#[test]
fn delivers_every_sample_in_the_given_order_with_its_bytes() {
    let d = dataset("order", 50, &[]);
    let order: Vec<u64> = (0..50).rev().collect();
    let mut l = start(&d, order.clone(), &opts(8), 16, None);
    let mut seen = Vec::new();
    block_on(async {
        while let Some(b) = l.next().await {
            let b = b.unwrap();
            assert_eq!(b.positions, (seen.len()..seen.len() + b.indices.len()).collect::<Vec<_>>());
            for (i, data) in b.indices.iter().zip(&b.data) {
                assert_eq!(&data[..], &content(*i)[..]);
            }
            seen.extend(b.indices);
        }
        l.close().await;
    });
    assert_eq!(seen, order);
    assert_eq!(l.live_tasks(), 0);
    assert_eq!(l.stats().started(), 50);
}

#[test]
fn completion_order_delivers_each_sample_once() {
    let d = dataset("unordered", 100, &[]);
    let o = LoaderOptions { batch_size: 7, in_order: false, ..Default::default() };
    let mut l = start(&d, (0..100).collect(), &o, 32, None);
    let mut seen = Vec::new();
    block_on(async {
        while let Some(b) = l.next().await {
            seen.extend(b.unwrap().indices);
        }
    });
    assert_eq!(seen.len(), 100);
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>().len(), 100);
}

#[test]
fn drop_last_never_fetches_the_dropped_tail() {
    let d = dataset("droplast", 10, &[]);
    let o = LoaderOptions { batch_size: 4, drop_last: true, ..Default::default() };
    let mut l = start(&d, (0..10).collect(), &o, 4, None);
    let sizes: Vec<usize> = block_on(async {
        let mut v = Vec::new();
        while let Some(b) = l.next().await {
            v.push(b.unwrap().indices.len());
        }
        v
    });
    assert_eq!(sizes, vec![4, 4]);
    assert_eq!(l.stats().started(), 8);
}

#[test]
fn cancel_before_start_fetches_nothing() {
    let d = dataset("before", 20, &[]);
    let token = CancellationToken::new();
    token.cancel();
    let mut l = start(&d, (0..20).collect(), &opts(4), 8, Some(&token));
    block_on(async {
        assert!(l.next().await.is_none());
        l.close().await;
    });
    assert_eq!(l.stats().started(), 0);
    assert_eq!(l.live_tasks(), 0);
}

#[test]
fn cancel_mid_stream_stops_new_requests_and_joins_every_task() {
    let d = dataset("mid", 3000, &[]);
    let pool_size = 16;
    let mut l = start(&d, (0..3000).collect(), &opts(10), pool_size, None);
    let (delivered, started_at_cancel) = block_on(async {
        let mut delivered = 0;
        for _ in 0..3 {
            delivered += l.next().await.unwrap().unwrap().indices.len();
        }
        let started = l.stats().started();
        l.cancel();
        (delivered, started)
    });
    assert_eq!(delivered, 30, "data flowed before the cancel");
    block_on(async {
        // The channel closes: at most the batches already buffered, then the end.
        let mut after = 0;
        while let Some(b) = l.next().await {
            after += 1;
            assert!(b.is_ok());
        }
        assert!(after <= 2, "only read-ahead batches remain after cancel, got {after}");
        l.close().await;
    });
    assert_eq!(l.live_tasks(), 0);
    let extra = l.stats().started() - started_at_cancel;
    assert!(extra <= pool_size as u64, "{extra} requests started after the cancel");
    assert!(l.stats().started() < 3000, "the epoch did not run to its end");
    // Nothing starts later either.
    let settled = l.stats().started();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(l.stats().started(), settled);
}

#[test]
fn cancel_and_close_are_idempotent() {
    let d = dataset("idem", 100, &[]);
    let mut l = start(&d, (0..100).collect(), &opts(10), 8, None);
    l.cancel();
    l.cancel();
    block_on(async {
        l.close().await;
        l.close().await;
        while l.next().await.is_some() {}
    });
    assert_eq!(l.live_tasks(), 0);
}

#[test]
fn one_shared_token_stops_every_loader() {
    let d = dataset("shared", 2000, &[]);
    let root = CancellationToken::new();
    let mut a = start(&d, (0..2000).collect(), &opts(10), 8, Some(&root));
    let mut b = start(&d, (0..2000).rev().collect(), &opts(10), 8, Some(&root));
    block_on(async {
        assert!(a.next().await.unwrap().is_ok());
        assert!(b.next().await.unwrap().is_ok());
        root.cancel();
        while a.next().await.is_some() {}
        while b.next().await.is_some() {}
        a.close().await;
        b.close().await;
    });
    assert_eq!(a.live_tasks() + b.live_tasks(), 0);
    assert!(a.stats().started() < 2000 && b.stats().started() < 2000);
}

#[test]
fn a_failed_object_is_delivered_with_its_uri_and_stops_or_continues_as_configured() {
    let d = dataset("errors", 40, &[13]);
    let missing_uri = d.source.uris[13].clone();
    for on_error in [OnError::Raise, OnError::Continue] {
        let o = LoaderOptions { batch_size: 10, on_error, ..Default::default() };
        let mut l = start(&d, (0..40).collect(), &o, 8, None);
        let results = block_on(async {
            let mut v = Vec::new();
            while let Some(b) = l.next().await {
                v.push(b);
            }
            l.close().await;
            v
        });
        let failure = results[1].as_ref().unwrap_err();
        assert_eq!(failure.error.kind(), ErrorKind::NotFound);
        assert_eq!(failure.error.uri(), Some(missing_uri.as_str()));
        assert_eq!(failure.indices, (10..20).collect::<Vec<u64>>(), "the failed batch names its samples");
        match on_error {
            OnError::Raise => assert_eq!(results.len(), 2),
            OnError::Continue => {
                assert_eq!(results.len(), 4);
                assert!(results[2].is_ok() && results[3].is_ok());
            }
        }
        assert_eq!(l.live_tasks(), 0);
    }
}
