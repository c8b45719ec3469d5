//! Content keys: canonical encoding properties, the classic collisions, golden keys,
//! cross-process stability, key documents and error paths.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use proptest::prelude::*;
use runcache::digest::Digest;
use runcache::key::{
    compute_key, encode_canonical, key_document, Buffer, Key, Prehashed, KEY_FORMAT_VERSION,
};
use runcache::Error;
use serde::ser::{Error as _, SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    encode_canonical(v).expect("encodes")
}

fn key<T: Serialize + ?Sized>(v: &T) -> Key {
    compute_key("tests.keys", "1", v).expect("key")
}

/// A byte string serialized with `serialize_bytes` (what `serde_bytes` does).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests over arbitrary value trees.

const VARIANTS: [&str; 2] = ["A", "B"];

/// An arbitrary value tree. Its variants are all distinct under the key rules (no `char`,
/// which encodes as a string; no unsigned integer that fits in `i128`, which encodes like the
/// `Int` of the same value), so `a != b` must imply different bytes.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Unit,
    Bool(bool),
    Int(i128),
    /// Only values above `i128::MAX`.
    Big(u128),
    F64(u64),
    F32(u32),
    Str(String),
    Bytes(Vec<u8>),
    Blob(Vec<u8>),
    Some(Box<V>),
    Seq(Vec<V>),
    Map(BTreeMap<String, V>),
    Variant(usize, Box<V>),
}

impl Serialize for V {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            V::Unit => s.serialize_unit(),
            V::Bool(b) => s.serialize_bool(*b),
            V::Int(i) => s.serialize_i128(*i),
            V::Big(u) => s.serialize_u128(*u),
            V::F64(bits) => s.serialize_f64(f64::from_bits(*bits)),
            V::F32(bits) => s.serialize_f32(f32::from_bits(*bits)),
            V::Str(x) => s.serialize_str(x),
            V::Bytes(b) => s.serialize_bytes(b),
            V::Blob(b) => Buffer(b).serialize(s),
            V::Some(v) => s.serialize_some(v.as_ref()),
            V::Seq(items) => items.serialize(s),
            V::Map(m) => m.serialize(s),
            V::Variant(i, v) => s.serialize_newtype_variant("V", *i as u32, VARIANTS[*i], v),
        }
    }
}

/// Small domains, so that equal and nearly-equal values are common.
fn arb_v() -> impl Strategy<Value = V> {
    let leaf = prop_oneof![
        Just(V::Unit),
        any::<bool>().prop_map(V::Bool),
        prop_oneof![-3i128..3, any::<i128>()].prop_map(V::Int),
        ((i128::MAX as u128 + 1)..=u128::MAX).prop_map(V::Big),
        prop_oneof![
            Just(0f64.to_bits()),
            Just((-0f64).to_bits()),
            Just(f64::NAN.to_bits()),
            Just(1f64.to_bits()),
            any::<u64>()
        ]
        .prop_map(V::F64),
        prop_oneof![Just(0f32.to_bits()), Just(1f32.to_bits()), any::<u32>()].prop_map(V::F32),
        "[ab1]{0,3}".prop_map(V::Str),
        prop::collection::vec(0u8..3, 0..4).prop_map(V::Bytes),
        prop::collection::vec(0u8..3, 0..4).prop_map(V::Blob),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(V::Seq),
            prop::collection::btree_map("[ab]{0,2}", inner.clone(), 0..3).prop_map(V::Map),
            inner.clone().prop_map(|v| V::Some(Box::new(v))),
            (0usize..2, inner).prop_map(|(i, v)| V::Variant(i, Box::new(v))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Injective and prefix-free: distinct values never share bytes, and no encoding is a strict
    /// prefix of another (so concatenations inside containers cannot be ambiguous).
    #[test]
    fn encoding_is_injective_and_prefix_free(values in prop::collection::vec(arb_v(), 2..10)) {
        let encoded: Vec<Vec<u8>> = values.iter().map(enc).collect();
        for (i, a) in values.iter().enumerate() {
            // Deterministic.
            prop_assert_eq!(&encoded[i], &enc(a));
            for (j, b) in values.iter().enumerate().skip(i + 1) {
                let (ea, eb) = (&encoded[i], &encoded[j]);
                if a == b {
                    prop_assert_eq!(ea, eb);
                } else {
                    prop_assert_ne!(ea, eb, "{:?} and {:?} collide", a, b);
                    prop_assert!(!ea.starts_with(eb) && !eb.starts_with(ea),
                        "one of {:?} / {:?} is a prefix of the other", a, b);
                }
            }
        }
    }

    /// Every strict prefix of an encoding differs from the encoding of any value (checked
    /// against the value's own sub-trees and a second arbitrary value).
    #[test]
    fn truncations_are_not_encodings(a in arb_v(), b in arb_v()) {
        let ea = enc(&a);
        let eb = enc(&b);
        for cut in 0..ea.len() {
            prop_assert_ne!(&ea[..cut], &eb[..]);
        }
    }

    /// A HashMap and a BTreeMap with the same content encode alike, whatever the insertion order.
    #[test]
    fn map_order_does_not_matter(entries in prop::collection::btree_map("[a-d]{0,3}", arb_v(), 0..8)) {
        let btree: BTreeMap<String, V> = entries.clone();
        let forward: HashMap<String, V> = entries.clone().into_iter().collect();
        let backward: HashMap<String, V> = entries.into_iter().rev().collect();
        prop_assert_eq!(enc(&btree), enc(&forward));
        prop_assert_eq!(enc(&btree), enc(&backward));
        prop_assert_eq!(key(&btree), key(&forward));
    }
}

// ---------------------------------------------------------------------------------------------
// The classic collisions (DESIGN §10) and the documented equalities.

#[test]
fn concatenation_without_separators_does_not_collide() {
    assert_ne!(enc(&("1", "23")), enc(&("12", "3")));
    assert_ne!(key(&("1", "23")), key(&("12", "3")));
    assert_ne!(enc(&vec!["ab", ""]), enc(&vec!["a", "b"]));
    assert_ne!(enc(&(1u8, 23u8)), enc(&(12u8, 3u8)));
    // Namespace and version are length-prefixed too.
    assert_ne!(
        compute_key("ab", "c", &()).unwrap(),
        compute_key("a", "bc", &()).unwrap()
    );
    assert_ne!(
        compute_key("ns", "1", &"x").unwrap(),
        compute_key("ns", "1x", &"").unwrap()
    );
}

#[test]
fn shapes_do_not_collide() {
    let a = vec![vec![0u8; 3]; 2];
    let b = vec![vec![0u8; 2]; 3];
    assert_ne!(enc(&a), enc(&b));
    assert_ne!(enc(&vec![vec![1], vec![2]]), enc(&vec![vec![1, 2]]));
    assert_ne!(enc(&vec![vec![0u8; 6]]), enc(&a));
    let empty: Vec<Vec<u8>> = vec![];
    assert_ne!(enc(&empty), enc(&vec![Vec::<u8>::new()]));
}

#[test]
fn floats_by_bits() {
    assert_ne!(enc(&0.0f64), enc(&-0.0f64));
    assert_ne!(enc(&0.0f32), enc(&-0.0f32));
    assert_ne!(enc(&1.5f32), enc(&1.5f64));
    assert_ne!(enc(&1.0f64), enc(&1u8));
    // NaN is keyed by its bits: the same NaN is stable, different payloads differ.
    assert_eq!(enc(&f64::NAN), enc(&f64::NAN));
    let other_nan = f64::from_bits(f64::NAN.to_bits() | 1);
    assert!(other_nan.is_nan());
    assert_ne!(enc(&f64::NAN), enc(&other_nan));
}

#[test]
fn integers_of_every_width_are_one_type() {
    assert_eq!(enc(&1u8), enc(&1i64));
    assert_eq!(enc(&1u8), enc(&1u128));
    assert_eq!(enc(&1u16), enc(&1i128));
    assert_eq!(enc(&-1i8), enc(&-1i128));
    assert_eq!(enc(&(i64::MAX)), enc(&(i64::MAX as u64)));
    assert_ne!(enc(&-1i32), enc(&1i32));
    assert_ne!(enc(&0i32), enc(&-0.0f64));
    assert_ne!(enc(&u128::MAX), enc(&i128::MIN));
    assert_ne!(enc(&(i128::MAX as u128 + 1)), enc(&i128::MIN));
}

#[test]
fn buffer_bytes_and_prehashed() {
    let data = b"some array bytes";
    // A buffer is keyed by its digest: not the same input as a plain byte string.
    assert_ne!(enc(&Buffer(data)), enc(&Bytes(data)));
    // ... nor as a sequence of u8.
    assert_ne!(enc(&Buffer(data)), enc(&data.to_vec()));
    // A known digest gives the same key as hashing the buffer.
    let pre = Prehashed {
        digest: Digest::of(data),
        len: data.len() as u64,
    };
    assert_eq!(enc(&Buffer(data)), enc(&pre));
    assert_eq!(key(&("x", Buffer(data))), key(&("x", pre)));
    // Length and content both matter.
    assert_ne!(enc(&Buffer(data)), enc(&Buffer(&data[1..])));
    assert_ne!(
        enc(&pre),
        enc(&Prehashed {
            digest: pre.digest,
            len: pre.len + 1
        })
    );
    // Large buffers (parallel hashing) are keyed by the same digest as small-path hashing.
    let big = vec![5u8; runcache::digest::PARALLEL_HASH_THRESHOLD * 2 + 7];
    assert_eq!(
        enc(&Buffer(&big)),
        enc(&Prehashed {
            digest: Digest::of_single_threaded(&big),
            len: big.len() as u64
        })
    );
}

#[test]
fn options_are_tagged() {
    let none: Option<Option<u8>> = None;
    let some_none: Option<Option<u8>> = Some(None);
    assert_ne!(enc(&none), enc(&some_none));
    assert_ne!(enc(&Some(1u8)), enc(&1u8));
    // Documented: None, () and unit structs are all "null".
    #[derive(Serialize)]
    struct Marker;
    assert_eq!(enc(&Option::<u8>::None), enc(&()));
    assert_eq!(enc(&Marker), enc(&()));
}

#[test]
fn chars_tuples_and_sequences() {
    assert_eq!(enc(&'x'), enc(&"x"));
    assert_eq!(enc(&'é'), enc(&"é"));
    // Tuples, arrays and vectors are all sequences.
    assert_eq!(enc(&(1u8, 2u8)), enc(&vec![1u8, 2]));
    assert_eq!(enc(&[1u8, 2]), enc(&vec![1u8, 2]));
    assert_ne!(enc(&"1"), enc(&1u8));
    assert_ne!(enc(&true), enc(&1u8));
}

#[test]
fn structs_are_maps_of_fields() {
    #[derive(Serialize)]
    struct A {
        lr: f64,
        epochs: u32,
    }
    #[derive(Serialize)]
    struct B {
        epochs: u64,
        lr: f64,
    }
    // Field order in the source and the struct's name do not enter the key.
    assert_eq!(
        enc(&A { lr: 0.5, epochs: 3 }),
        enc(&B { epochs: 3, lr: 0.5 })
    );
    let mut m = BTreeMap::new();
    m.insert("epochs", serde_json::json!(3));
    m.insert("lr", serde_json::json!(0.5));
    assert_eq!(enc(&A { lr: 0.5, epochs: 3 }), enc(&m));
    // Field names and values do.
    assert_ne!(
        enc(&A { lr: 0.5, epochs: 3 }),
        enc(&A { lr: 0.5, epochs: 4 })
    );
    // Skipped fields are not counted.
    #[derive(Serialize)]
    struct C {
        lr: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        extra: Option<u8>,
    }
    #[derive(Serialize)]
    struct D {
        lr: f64,
    }
    assert_eq!(
        enc(&C {
            lr: 1.0,
            extra: None
        }),
        enc(&D { lr: 1.0 })
    );
    assert_ne!(
        enc(&C {
            lr: 1.0,
            extra: Some(1)
        }),
        enc(&D { lr: 1.0 })
    );
}

#[test]
fn enums_are_keyed_by_variant_name() {
    #[derive(Serialize)]
    enum Opt {
        Sgd,
        Adam { beta: f64 },
        Lbfgs(u32),
    }
    #[derive(Serialize)]
    enum Reordered {
        Lbfgs(u32),
        Sgd,
    }
    assert_eq!(enc(&Opt::Sgd), enc(&Reordered::Sgd));
    assert_eq!(enc(&Opt::Lbfgs(5)), enc(&Reordered::Lbfgs(5)));
    assert_ne!(enc(&Opt::Sgd), enc(&"Sgd"));
    assert_ne!(enc(&Opt::Lbfgs(5)), enc(&5u32));
    assert_ne!(enc(&Opt::Adam { beta: 0.9 }), enc(&Opt::Lbfgs(5)));
}

// ---------------------------------------------------------------------------------------------
// Golden keys.

#[derive(Serialize)]
struct TrainArgs<'a> {
    lr: f64,
    seeds: Vec<u32>,
    model: &'a str,
    optimizer: Option<Optimizer>,
    data: Buffer<'a>,
}

#[derive(Serialize)]
enum Optimizer {
    Adam { beta1: f64, beta2: f64 },
}

fn golden_train_args() -> TrainArgs<'static> {
    TrainArgs {
        lr: 0.001,
        seeds: vec![1, 2, 3],
        model: "resnet18",
        optimizer: Some(Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
        }),
        data: Buffer(b"pretend these are float32 pixels"),
    }
}

/// IF THIS TEST FAILS YOU CHANGED THE KEY FORMAT: every existing cache entry would silently
/// become unreachable. If the change is deliberate, bump `KEY_FORMAT_VERSION`, describe the new
/// layout in `docs/key-format.md`, and update these goldens in the same commit.
#[test]
fn golden_keys() {
    assert_eq!(KEY_FORMAT_VERSION, 1);
    assert_eq!(
        hex::encode(enc(&("a", 1u8))),
        concat!(
            "09",
            "0200000000000000", // SEQ, 2 elements
            "06",
            "0100000000000000",
            "61", // STR "a"
            "03",
            "00",
            "01000000000000000000000000000000", // INT +1
        )
    );
    let mut map = HashMap::new();
    map.insert("b".to_string(), 2i64);
    map.insert("a".to_string(), 1i64);
    let cases: Vec<(&str, Key, &str)> = vec![
        (
            "unit",
            compute_key("ns", "1", &()).unwrap(),
            "1f2636e1c5879a3e78a3b3d92031d039c56a7f3d2e71d6faf7c659ebe44f4c9a",
        ),
        (
            "train",
            compute_key("examples.train", "2", &golden_train_args()).unwrap(),
            "fb96424d52a0877c6d26fa6d37d3252fd0441380142e7c6160e1784256ebe7a6",
        ),
        (
            "ints",
            compute_key("ns", "1", &(1u8, -1i64, u128::MAX, i128::MIN)).unwrap(),
            "c2c82eb9f82f700e58d553db5a4f4d7cc6964f2eac3b0d61d459f7e2be31a2dc",
        ),
        (
            "map",
            compute_key("ns", "1", &map).unwrap(),
            "32c453010ea475f7c85eabe96b99b0c40a00eff21daa1e3e6d357384a7e2b0a8",
        ),
        (
            "floats",
            compute_key("ns", "1", &(0.1f64, -0.0f64, f64::NAN, 0.1f32)).unwrap(),
            "93c222aa5872fcb98fe9cfb308cd089bac58d3fdbeb5d52ee8fedf4445ec84ed",
        ),
    ];
    let mut failed = Vec::new();
    for (name, got, want) in &cases {
        println!("{name}: {got}");
        if got.to_hex() != *want {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "golden keys changed: {failed:?}");
}

/// The key bytes assembled by hand from `docs/key-format.md`, hashed with the `blake3` crate
/// directly: the documentation and the code describe the same format.
#[test]
fn key_bytes_follow_the_documented_layout() {
    fn str_(out: &mut Vec<u8>, s: &str) {
        out.push(0x06);
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: i128) {
        out.push(0x03);
        out.push(u8::from(v < 0));
        out.extend_from_slice(&v.unsigned_abs().to_le_bytes());
    }
    let prefix = |ns: &str, version: &str| {
        let mut b = b"runcache/key\0".to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        str_(&mut b, ns);
        str_(&mut b, version);
        b
    };
    let hash = |b: &[u8]| blake3::hash(b).to_hex().to_string();

    // () -> NULL
    let mut b = prefix("ns", "1");
    b.push(0x01);
    assert_eq!(compute_key("ns", "1", &()).unwrap().to_hex(), hash(&b));

    // {"b": 2, "a": 1} -> MAP, 2 entries, sorted by encoded key ("a" before "b")
    let mut b = prefix("ns", "1");
    b.push(0x0A);
    b.extend_from_slice(&2u64.to_le_bytes());
    str_(&mut b, "a");
    int(&mut b, 1);
    str_(&mut b, "b");
    int(&mut b, 2);
    let map: HashMap<&str, u8> = [("b", 2), ("a", 1)].into_iter().collect();
    assert_eq!(compute_key("ns", "1", &map).unwrap().to_hex(), hash(&b));

    // (Some(-0.0f64), Buffer, Sgd) -> SEQ of SOME F64, DIGEST, VARIANT
    #[derive(Serialize)]
    enum Opt {
        Sgd,
    }
    let mut b = prefix("ns", "1");
    b.push(0x09);
    b.extend_from_slice(&3u64.to_le_bytes());
    b.push(0x08);
    b.push(0x05);
    b.extend_from_slice(&(-0.0f64).to_bits().to_le_bytes());
    b.push(0x0C);
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(blake3::hash(b"xyz").as_bytes());
    b.push(0x0B);
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"Sgd");
    b.push(0x01);
    let args = (Some(-0.0f64), Buffer(b"xyz"), Opt::Sgd);
    assert_eq!(compute_key("ns", "1", &args).unwrap().to_hex(), hash(&b));
}

// ---------------------------------------------------------------------------------------------
// Cross-process stability: a child process (this very test binary) computes the same keys.

const CHILD_ENV: &str = "RUNCACHE_KEYS_STABILITY_CHILD";

fn stability_cases() -> Vec<(String, Key)> {
    let mut cases = Vec::new();
    let mut params: HashMap<String, i64> = HashMap::new();
    for i in 0..64 {
        params.insert(format!("param{i}"), i * 7 - 100);
    }
    cases.push(("hashmap".to_string(), key(&params)));
    let mut nested: HashMap<u32, HashMap<String, Vec<f64>>> = HashMap::new();
    for i in 0..16u32 {
        let inner = (0..8)
            .map(|j| (format!("k{j}"), vec![f64::from(i), f64::from(j)]))
            .collect();
        nested.insert(i, inner);
    }
    cases.push(("nested".to_string(), key(&nested)));
    cases.push(("train".to_string(), key(&golden_train_args())));
    cases.push((
        "tuple".to_string(),
        key(&("1", "23", 4.5f32, Some(()), 'c')),
    ));
    cases
}

/// Child half of `keys_are_stable_across_processes`; does nothing in a normal test run.
#[test]
fn stability_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    for (name, k) in stability_cases() {
        println!("STABLE-KEY {name} {k}");
    }
}

#[test]
fn keys_are_stable_across_processes() {
    let exe = std::env::current_exe().expect("test binary path");
    let mine = stability_cases();
    for _ in 0..2 {
        let out = Command::new(&exe)
            .args([
                "stability_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("re-run the test binary");
        assert!(out.status.success(), "child failed: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let theirs: Vec<(String, String)> = stdout
            .lines()
            // libtest may print `test stability_child ... ` on the same line.
            .filter_map(|l| l.split_once("STABLE-KEY ").map(|(_, rest)| rest))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        assert_eq!(theirs.len(), mine.len(), "child output: {stdout}");
        for ((n1, k1), (n2, k2)) in mine.iter().zip(&theirs) {
            assert_eq!(n1, n2);
            assert_eq!(&k1.to_hex(), k2, "key of `{n1}` differs in another process");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key documents.

#[test]
fn key_document_shows_what_went_in() {
    let big = vec![1u8; 1000];
    let doc = key_document("examples.train", "2", &golden_train_args()).unwrap();
    assert_eq!(doc["key_format"], KEY_FORMAT_VERSION);
    assert_eq!(doc["namespace"], "examples.train");
    assert_eq!(doc["version"], "2");
    let args = &doc["args"];
    assert_eq!(args["lr"], 0.001);
    assert_eq!(args["seeds"], serde_json::json!([1, 2, 3]));
    assert_eq!(args["optimizer"]["Adam"]["beta2"], 0.999);
    let data = b"pretend these are float32 pixels";
    assert_eq!(args["data"]["$buffer"]["len"], data.len());
    assert_eq!(args["data"]["$buffer"]["blake3"], Digest::of(data).to_hex());

    #[derive(Serialize)]
    struct Misc<'a> {
        small: Bytes<'a>,
        large: Bytes<'a>,
        pre: Prehashed,
        nan: f64,
        inf: f32,
        ninf: f64,
        tenth: f32,
        some_none: Option<Option<u8>>,
        by_int: BTreeMap<u32, &'a str>,
        by_pair: BTreeMap<(u8, u8), bool>,
        huge: u128,
        unit_variant: Optimizer2,
    }
    #[derive(Serialize)]
    enum Optimizer2 {
        Sgd,
    }
    let misc = Misc {
        small: Bytes(b"\x01\xff"),
        large: Bytes(&big),
        pre: Prehashed::of(b"result"),
        nan: f64::NAN,
        inf: f32::INFINITY,
        ninf: f64::NEG_INFINITY,
        tenth: 0.1,
        some_none: Some(None),
        by_int: [(3, "three"), (10, "ten")].into_iter().collect(),
        by_pair: [((1, 2), true)].into_iter().collect(),
        huge: u128::MAX,
        unit_variant: Optimizer2::Sgd,
    };
    let doc = key_document("ns", "v", &misc).unwrap();
    let a = &doc["args"];
    assert_eq!(a["small"], "01ff");
    assert_eq!(a["large"]["$bytes"]["len"], 1000);
    assert_eq!(a["large"]["$bytes"]["blake3"], Digest::of(&big).to_hex());
    assert_eq!(a["pre"]["$prehashed"]["len"], 6);
    assert_eq!(
        a["pre"]["$prehashed"]["blake3"],
        Digest::of(b"result").to_hex()
    );
    assert_eq!(a["nan"], "NaN");
    assert_eq!(a["inf"], "inf");
    assert_eq!(a["ninf"], "-inf");
    assert_eq!(a["tenth"], 0.1);
    assert_eq!(a["some_none"], serde_json::json!({"$some": null}));
    assert_eq!(a["by_int"], serde_json::json!({"3": "three", "10": "ten"}));
    assert_eq!(a["by_pair"], serde_json::json!({"[1,2]": true}));
    assert_eq!(a["huge"], u128::MAX.to_string());
    assert_eq!(a["unit_variant"], "Sgd");
    // Building the document does not depend on map iteration order either.
    let m1: HashMap<u32, u32> = (0..50).map(|i| (i, i * i)).collect();
    let m2: HashMap<u32, u32> = (0..50).rev().map(|i| (i, i * i)).collect();
    assert_eq!(
        key_document("ns", "v", &m1).unwrap(),
        key_document("ns", "v", &m2).unwrap()
    );
}

#[test]
fn key_document_keeps_keys_that_render_alike() {
    // "1" (a string) and 1 (an integer) are different keys that render alike.
    #[derive(Serialize)]
    #[serde(untagged)]
    enum K {
        S(&'static str),
        I(u8),
    }
    struct Both;
    impl Serialize for Both {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry(&K::S("1"), "string")?;
            m.serialize_entry(&K::I(1), "int")?;
            m.end()
        }
    }
    let doc = key_document("ns", "v", &Both).unwrap();
    assert_eq!(doc["args"].as_object().unwrap().len(), 2, "{doc}");
}

// ---------------------------------------------------------------------------------------------
// Errors: unhashable arguments name their path.

/// Fails to serialize when `true`.
struct MaybeBad(bool);

impl Serialize for MaybeBad {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 {
            Err(S::Error::custom("socket handles cannot be keyed"))
        } else {
            s.serialize_u8(0)
        }
    }
}

fn unhashable(r: runcache::Result<impl std::fmt::Debug>) -> (String, String) {
    match r {
        Err(Error::Unhashable { path, message }) => (path, message),
        other => panic!("expected Unhashable, got {other:?}"),
    }
}

#[test]
fn errors_name_the_argument() {
    #[derive(Serialize)]
    struct Args {
        lr: f64,
        train: Vec<MaybeBad>,
    }
    let args = Args {
        lr: 0.1,
        train: vec![
            MaybeBad(false),
            MaybeBad(false),
            MaybeBad(false),
            MaybeBad(true),
        ],
    };
    let (path, message) = unhashable(compute_key("ns", "1", &args));
    assert_eq!(path, "args.train[3]");
    assert!(message.contains("socket handles"), "{message}");
    let (path, _) = unhashable(key_document("ns", "1", &args));
    assert_eq!(path, "args.train[3]");

    let mut map = BTreeMap::new();
    map.insert("epochs", MaybeBad(false));
    map.insert("lr", MaybeBad(true));
    let (path, _) = unhashable(compute_key("ns", "1", &map));
    assert_eq!(path, r#"args["lr"]"#);
    let (path, _) = unhashable(key_document("ns", "1", &map));
    assert_eq!(path, r#"args["lr"]"#);

    let nested = vec![(1u8, Some(map))];
    let (path, _) = unhashable(compute_key("ns", "1", &nested));
    assert_eq!(path, r#"args[0][1]["lr"]"#);

    let (path, _) = unhashable(encode_canonical(&vec![MaybeBad(true)]));
    assert_eq!(path, "value[0]");

    // A map whose key fails.
    let mut bad_keys = BTreeMap::new();
    bad_keys.insert(5u8, ());
    struct BadKeyMap;
    impl Serialize for BadKeyMap {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("ok", &1)?;
            m.serialize_entry(&MaybeBad(true), &2)?;
            m.end()
        }
    }
    let (path, _) = unhashable(compute_key("ns", "1", &BadKeyMap));
    assert_eq!(path, "args.<key #1>");
    let (path, _) = unhashable(key_document("ns", "1", &BadKeyMap));
    assert_eq!(path, "args.<key #1>");
}

#[test]
fn duplicate_map_keys_are_errors() {
    // 1u8 and 1i64 are the same integer: a map holding both has no canonical encoding.
    struct Dup;
    impl Serialize for Dup {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry(&1u8, "a")?;
            m.serialize_entry(&1i64, "b")?;
            m.end()
        }
    }
    let (path, message) = unhashable(compute_key("ns", "1", &vec![Dup]));
    assert_eq!(path, "args[0][1]");
    assert!(message.contains("duplicate"), "{message}");
    let (path, _) = unhashable(key_document("ns", "1", &vec![Dup]));
    assert_eq!(path, "args[0][1]");

    // The same struct field twice (a hand-written Serialize impl).
    struct DupField;
    impl Serialize for DupField {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("DupField", 2)?;
            st.serialize_field("x", &1)?;
            st.serialize_field("x", &2)?;
            st.end()
        }
    }
    let (path, _) = unhashable(compute_key("ns", "1", &DupField));
    assert_eq!(path, r#"args["x"]"#);
    let (path, _) = unhashable(key_document("ns", "1", &DupField));
    assert_eq!(path, r#"args["x"]"#);
}

#[test]
fn reserved_names_cannot_be_misused() {
    struct Fake;
    impl Serialize for Fake {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_newtype_struct("$runcache::Buffer", &42u32)
        }
    }
    let (path, message) = unhashable(compute_key("ns", "1", &("x", Fake)));
    assert_eq!(path, "args[1]");
    assert!(message.contains("reserved"), "{message}");
    let (path, _) = unhashable(key_document("ns", "1", &("x", Fake)));
    assert_eq!(path, "args[1]");
}

#[test]
fn other_serializers_see_plain_values() {
    let v = serde_json::to_value(Buffer(b"\x01\x02")).unwrap();
    assert_eq!(v, serde_json::json!([1, 2]));
    let p = Prehashed::of(b"abc");
    let v = serde_json::to_value(p).unwrap();
    assert_eq!(v["len"], 3);
    assert_eq!(v["blake3"], p.digest.to_hex());
}

// ---------------------------------------------------------------------------------------------
// Speed (printed, never asserted). Run with:
//   cargo test -p runcache --test keys -- --ignored --nocapture key_speed

#[test]
#[ignore = "measurement; run by hand"]
fn key_speed() {
    use std::time::Instant;
    let size = 256usize << 20;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let _ = compute_key("warm", "1", &Buffer(&data[..1 << 20])).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let k = compute_key("speed", "1", &("input", Buffer(&data))).unwrap();
        let key_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let d = Digest::of(&data);
        let raw_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let d1 = Digest::of_single_threaded(&data);
        let one_s = t.elapsed().as_secs_f64();
        assert_eq!(d, d1);
        let gib = size as f64 / (1u64 << 30) as f64;
        println!(
            "256 MiB Buffer key: {:.1} ms ({:.2} GiB/s); Digest::of: {:.1} ms ({:.2} GiB/s); \
             one thread: {:.1} ms ({:.2} GiB/s)  [{k}]",
            key_s * 1e3,
            gib / key_s,
            raw_s * 1e3,
            gib / raw_s,
            one_s * 1e3,
            gib / one_s
        );
    }
    let args = golden_train_args();
    let n = 200_000;
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(compute_key("speed", "1", &(i, &args)).unwrap());
    }
    println!(
        "small args (struct of 5 fields + buffer of 32 B): {:.2} µs per key",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(compute_key("speed", "1", &(i, "lr", 0.1)).unwrap());
    }
    println!(
        "tiny args (int, str, float): {:.2} µs per key",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
