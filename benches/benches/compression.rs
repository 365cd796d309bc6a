//! What LZ4 compression costs and saves per value size: the evidence for
//! [`cachette::DEFAULT_COMPRESS_ABOVE`].
//!
//! The value is a page of product records (`Vec<Item>`) serialized as JSON,
//! cut to an exact byte size: ids, SKUs, names, brands, categories, prices,
//! stock, tags and descriptions drawn from a small vocabulary with a seeded
//! generator. Repetitive the way real JSON is (field names in every record,
//! a catalogue's words), not trivially (no two records alike). Sizes are
//! 64 B to 64 KiB of JSON; the stored entry adds the 45-byte envelope.
//!
//! * `compression_cpu/<size>/{plain,lz4}`: one `Cache::set` then one
//!   `Cache::get` of the value on an [`EmbeddedStore`]: JSON encode,
//!   envelope, (compression), store insert, store read, envelope,
//!   (decompression), JSON decode. `plain` has compression off, `lz4`
//!   compresses every payload (`compress_above(Some(0))`), so the
//!   difference is the CPU compression adds at that size, including the
//!   attempts that are thrown away because they saved under an eighth.
//! * `compression_lz4/<size>/{compress,decompress}`: the breakdown: LZ4
//!   alone on the page's JSON, with the calls `cachette` makes (one block
//!   into a preallocated buffer; decompression into a buffer of the
//!   declared size).
//!
//! Before the runs the bench prints, per size, the stored entry's bytes
//! plain and compressed and the share saved.
//!
//! After them it prints the Redis figures: the same set + get (and a get
//! alone) through a [`RedisStore`] on a real `redis-server` on loopback
//! (spawned by `cachette_test::RedisServer`), plain against LZ4. These are
//! not criterion groups: measured one after the other on the shared 2-core
//! machine, byte-identical 64-byte entries came out at 22 µs and 55 µs, so
//! the two caches are measured interleaved instead: rounds of
//! `AB_OPS` operations each, alternating which goes first, and the
//! table gives the median round of each and the median of the per-round
//! ratios.
//!
//! Runtime: current_thread, as in `redis.rs` and `embedded.rs`: the timed
//! batch runs inside one `block_on`.

// Benchmark setup: a failure to start Redis or build the fixture should
// abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use cachette::Cache;
use cachette::store::{EmbeddedStore, RedisConfig, RedisStore, Store};
use cachette_test::RedisServer;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(3600);
const SIZES: [usize; 8] = [64, 256, 512, 1024, 2048, 4096, 16 * 1024, 64 * 1024];

/// One product record. Every field but `id` is optional so a page can be
/// cut to an exact size (the last record keeps the fields that fit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    price_cents: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_stock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stock: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rating: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

const WORDS: &[&str] = &[
    "steel",
    "oak",
    "walnut",
    "linen",
    "cotton",
    "wool",
    "brass",
    "glass",
    "ceramic",
    "matte",
    "brushed",
    "polished",
    "compact",
    "adjustable",
    "foldable",
    "wireless",
    "rechargeable",
    "lamp",
    "chair",
    "desk",
    "shelf",
    "rug",
    "kettle",
    "mug",
    "blanket",
    "cushion",
    "mirror",
    "clock",
    "speaker",
    "charger",
    "backpack",
    "bottle",
    "with",
    "and",
    "for",
    "the",
    "a",
    "of",
    "in",
    "designed",
    "crafted",
    "everyday",
    "home",
    "office",
    "travel",
    "durable",
    "soft",
    "warm",
    "light",
    "quiet",
    "modern",
    "classic",
    "minimal",
    "sturdy",
    "easy",
    "to",
    "clean",
    "assemble",
    "finish",
    "base",
    "handle",
    "cover",
    "cable",
    "battery",
    "hours",
    "year",
    "warranty",
    "recycled",
    "materials",
    "natural",
    "black",
    "white",
    "grey",
    "green",
    "blue",
];
const BRANDS: &[&str] = &[
    "Nordlys",
    "Atelier Ouest",
    "Kettle & Co",
    "Hearth",
    "Lumen Works",
    "Fjord",
    "Mistral",
];
const CATEGORIES: &[&str] = &[
    "lighting",
    "furniture",
    "kitchen",
    "textiles",
    "audio",
    "accessories",
    "storage",
    "decor",
];
const TAGS: &[&str] = &[
    "new",
    "sale",
    "bestseller",
    "eco",
    "limited",
    "gift",
    "bundle",
    "clearance",
    "premium",
];

/// A seeded xorshift generator: the same pages on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| self.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn full_item(id: u64, rng: &mut Rng) -> Item {
    let name_words = 2 + rng.below(3);
    let tags = 1 + rng.below(3);
    let description_words = 8 + rng.below(24);
    Item {
        id,
        sku: Some(
            format!("{}-{:06}", &rng.pick(CATEGORIES)[..3], rng.below(1_000_000)).to_uppercase(),
        ),
        price_cents: Some(499 + rng.below(50_000) as u32),
        in_stock: Some(rng.below(4) != 0),
        name: Some(rng.words(name_words)),
        brand: Some(rng.pick(BRANDS).to_owned()),
        category: Some(rng.pick(CATEGORIES).to_owned()),
        stock: Some(rng.below(500) as u32),
        rating: Some(1.0 + rng.below(40) as f32 / 10.0),
        tags: Some((0..tags).map(|_| rng.pick(TAGS).to_owned()).collect()),
        description: Some(rng.words(description_words)),
    }
}

fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).expect("json").len()
}

/// A page of items whose JSON is exactly `target` bytes (at least 10).
fn page(target: usize) -> Vec<Item> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target as u64);
    let mut items = Vec::new();
    // `[` + items joined by `,` + `]`.
    let mut used = 2;
    let with = |used: usize, n: usize, item: &Item| used + usize::from(n > 0) + json_len(item);
    for id in 0.. {
        let full = full_item(id, &mut rng);
        if with(used, items.len(), &full) <= target {
            used = with(used, items.len(), &full);
            items.push(full);
            continue;
        }
        // The last item: the fields that fit, then as much description.
        let mut part = Item {
            id,
            sku: None,
            price_cents: None,
            in_stock: None,
            name: None,
            brand: None,
            category: None,
            stock: None,
            rating: None,
            tags: None,
            description: None,
        };
        let setters: [fn(&mut Item, &Item); 10] = [
            |p, f| p.sku = f.sku.clone(),
            |p, f| p.price_cents = f.price_cents,
            |p, f| p.in_stock = f.in_stock,
            |p, f| p.name = f.name.clone(),
            |p, f| p.brand = f.brand.clone(),
            |p, f| p.category = f.category.clone(),
            |p, f| p.stock = f.stock,
            |p, f| p.rating = f.rating,
            |p, f| p.tags = f.tags.clone(),
            |p, _| p.description = Some(String::new()),
        ];
        for set in setters {
            let mut next = part.clone();
            set(&mut next, &full);
            if with(used, items.len(), &next) <= target {
                part = next;
            }
        }
        // Pad the longest text field present to the exact size.
        let room = target.saturating_sub(with(used, items.len(), &part));
        let filler = full.description.clone().unwrap_or_default();
        let text = [&mut part.description, &mut part.name, &mut part.sku]
            .into_iter()
            .flatten()
            .next();
        if let Some(text) = text {
            text.extend(filler.chars().cycle().take(room));
        }
        if with(used, items.len(), &part) <= target {
            items.push(part);
        }
        break;
    }
    items
}

fn cache(store: impl Store, namespace: &str, compress: bool) -> Cache<Vec<Item>> {
    Cache::builder(namespace)
        .ttl(TTL)
        .compress_above(compress.then_some(0))
        .store(store)
        .build()
        .expect("cache")
}

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// Prints the stored sizes, plain and compressed, per value size.
fn report_sizes(rt: &tokio::runtime::Runtime, pages: &[(usize, Vec<Item>)]) {
    let store = EmbeddedStore::new(64 * 1024 * 1024);
    println!("\nstored entry bytes (45-byte envelope included):");
    println!("| JSON | plain | lz4 | saved | compressed? |");
    println!("|---:|---:|---:|---:|:---:|");
    for (size, page) in pages {
        let stored = |compress: bool| {
            let c = cache(store.clone(), &format!("size{size}{compress}"), compress);
            rt.block_on(c.set("k", page)).expect("set");
            assert_eq!(rt.block_on(c.get("k")).expect("get").as_ref(), Some(page));
            let key = c.store_key("k").expect("key");
            let bytes = rt.block_on(store.get(&key)).expect("read").expect("stored");
            (bytes.len(), c.stats().compressed_writes > 0)
        };
        let (plain, _) = stored(false);
        let (packed, compressed) = stored(true);
        println!(
            "| {} | {plain} | {packed} | {:.1}% | {} |",
            label(*size),
            100.0 * (plain - packed) as f64 / plain as f64,
            if compressed {
                "yes"
            } else {
                "no (saves < 1/8)"
            }
        );
    }
    println!();
}

fn compression(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pages: Vec<(usize, Vec<Item>)> = SIZES.iter().map(|&s| (s, page(s))).collect();
    for (size, page) in &pages {
        assert_eq!(json_len(page), *size, "page cut to size");
    }
    report_sizes(&rt, &pages);

    let embedded = EmbeddedStore::new(64 * 1024 * 1024);
    let mut group = c.benchmark_group("compression_cpu");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (size, page) in &pages {
        group.throughput(Throughput::Bytes(*size as u64));
        for (variant, compress) in [("plain", false), ("lz4", true)] {
            let cache = cache(embedded.clone(), &format!("cpu-{variant}"), compress);
            group.bench_with_input(BenchmarkId::new(variant, label(*size)), page, |b, page| {
                b.to_async(&rt).iter(|| async {
                    cache.set("k", black_box(page)).await.expect("set");
                    let got = cache.get("k").await.expect("get");
                    debug_assert_eq!(got.as_ref(), Some(page));
                    got
                });
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("compression_lz4");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (size, page) in &pages {
        let json = serde_json::to_vec(page).expect("json");
        let block = lz4_flex::block::compress(&json);
        group.throughput(Throughput::Bytes(*size as u64));
        group.bench_with_input(
            BenchmarkId::new("compress", label(*size)),
            &json,
            |b, json| {
                b.iter(|| {
                    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(json.len())];
                    let n =
                        lz4_flex::block::compress_into(black_box(json), &mut out).expect("fits");
                    out.truncate(n);
                    out
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("decompress", label(*size)),
            &block,
            |b, block| {
                b.iter(|| {
                    let mut out = vec![0u8; json.len()];
                    let n = lz4_flex::block::decompress_into(black_box(block), &mut out)
                        .expect("valid block");
                    debug_assert_eq!(n, json.len());
                    out
                });
            },
        );
    }
    group.finish();

    let server = RedisServer::spawn();
    let config = RedisConfig::from_url(&server.url()).expect("redis url");
    let redis = rt
        .block_on(RedisStore::connect(config))
        .expect("connect to redis");
    redis_ab(&rt, &redis, &pages);
    drop(rt);
    drop(server);
}

/// Interleaved rounds per size, and operations per round.
const AB_ROUNDS: usize = 60;
const AB_OPS: usize = 20;

/// Median of `xs` (sorted in place).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Times `AB_OPS` runs of `op`, in µs per run.
fn round<F: Future>(rt: &tokio::runtime::Runtime, mut op: impl FnMut() -> F) -> f64 {
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..AB_OPS {
            black_box(op().await);
        }
    });
    start.elapsed().as_secs_f64() * 1e6 / AB_OPS as f64
}

/// Set + get and get alone through Redis, plain against LZ4, interleaved.
fn redis_ab(rt: &tokio::runtime::Runtime, redis: &RedisStore, pages: &[(usize, Vec<Item>)]) {
    println!(
        "\nRedis on loopback, interleaved A/B ({AB_ROUNDS} rounds of {AB_OPS}; medians, µs per operation):"
    );
    println!(
        "| JSON | set+get plain | set+get lz4 | lz4 / plain | get plain | get lz4 | lz4 / plain |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (size, page) in pages {
        let caches = [false, true].map(|compress| {
            let c = cache(redis.clone(), &format!("ab{compress}"), compress);
            rt.block_on(c.set("k", page)).expect("set");
            c
        });
        let set_get = |c: &Cache<Vec<Item>>| {
            round(rt, || async {
                c.set("k", page).await.expect("set");
                c.get("k").await.expect("get")
            })
        };
        let get = |c: &Cache<Vec<Item>>| round(rt, || async { c.get("k").await.expect("get") });
        // Warm-up.
        for c in &caches {
            set_get(c);
        }
        let mut both = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        let mut ratios = [Vec::new(), Vec::new()];
        for r in 0..AB_ROUNDS {
            for (m, measure) in [&set_get as &dyn Fn(&Cache<Vec<Item>>) -> f64, &get]
                .into_iter()
                .enumerate()
            {
                let mut t = [0.0; 2];
                let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    t[i] = measure(&caches[i]);
                }
                both[m][0].push(t[0]);
                both[m][1].push(t[1]);
                ratios[m].push(t[1] / t[0]);
            }
        }
        let [sg, g] = both;
        let [[mut sg_plain, mut sg_lz4], [mut g_plain, mut g_lz4]] = [sg, g];
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} | {:.2}× |",
            label(*size),
            median(&mut sg_plain),
            median(&mut sg_lz4),
            median(&mut ratios[0]),
            median(&mut g_plain),
            median(&mut g_lz4),
            median(&mut ratios[1]),
        );
    }
    println!();
}

criterion_group!(benches, compression);
criterion_main!(benches);
