//! Value stability of the public Rust API: seeded outputs checked against the pins of
//! `tests/test_value_stability.py`, read from that file, so that one set of numbers holds for both APIs
//! (rand_distr's `tests/value_stability.rs` is the model).
//!
//! A Rust caller reproduces a Python call by building the same distribution and taking the key of the call
//! as the Python API does (`sampler::keys`): a call with `seed=s` is stateless and uses
//! `stateless_key(s)`; call `i` without a seed, on a sampler built with `seed=s`, uses the i-th key of
//! `Keys::new(Some(s))`. The Python samplers map to `LogUniform::new`, `Uniform::new`, `Zipf::new` and
//! (`UnigramSampler`) `Unigram::tf(.., float32 = false)`; `true_classes` go flattened, row-major.
//!
//! Checked as the Python test checks them: the ids exactly (the SHA-256 of their little-endian int64
//! bytes, and the first six for a readable failure), `num_tries` exactly, expected counts to 1e-6 relative
//! (they go through the platform's libm in places). A failure is either a bug or a change of every user's
//! seeded results: then the pins are regenerated (`python tests/test_value_stability.py`, which this test
//! follows) and the change goes into the release notes. The Python test's TensorFlow drop-in cases
//! (`tf ...`) are not repeated here: their argument handling lives in Python.

use zipfnce::sampler::{
    self, sample, sample_per_row, stateless_key, Keys, LogUniform, PerRowSample, Sample, Uniform, Unigram,
    Zipf,
};

/// The Python test's `TC`, `[[0, 5], [17, 99], [3, 3], [998, 1]]`, flattened.
const TC: [i64; 8] = [0, 5, 17, 99, 3, 3, 998, 1];

#[test]
fn log_uniform() {
    let pins = Pins::load();
    let lu = LogUniform::new(1000).unwrap();
    // lu.sample(64, true_classes=TC, seed=42), with unique=False, and with remove_true=True.
    let unique = sample(&lu, stateless_key(42), 64, true, Some(&TC), false).unwrap();
    pins.check("log_uniform unique", unique);
    let plain = sample(&lu, stateless_key(42), 64, false, Some(&TC), false).unwrap();
    pins.check("log_uniform plain", plain);
    let removed = sample(&lu, stateless_key(42), 64, true, Some(&TC), true).unwrap();
    pins.check("log_uniform remove_true", removed);
    // LogUniformSampler(2**62).sample(32, true_classes=TC, seed=7)
    let big = sample(&LogUniform::new(1 << 62).unwrap(), stateless_key(7), 32, true, Some(&TC), false);
    pins.check("log_uniform 2^62", big.unwrap());
    // lu.sample(20_000, unique=False, seed=3): drawn on several threads where there are several.
    pins.check("log_uniform parallel", sample(&lu, stateless_key(3), 20_000, false, None, false).unwrap());
    // LogUniformSampler(1000, seed=5).sample(16): the first call of the stream of seed 5.
    let first = Keys::new(Some(5)).next_key();
    pins.check("log_uniform stream", sample(&lu, first, 16, true, None, false).unwrap());
}

#[test]
fn log_uniform_unique_over_several_chunks() {
    // Unique draws over several chunks, which skip the draws of collected heads: byte map (with and without
    // heavy rejection, and at its largest range), bit map, hash set with the huge-range draw.
    let pins = Pins::load();
    let key = stateless_key(42);
    let draw = |range: i64, n: i64, truth: Option<&[i64]>| {
        sample(&LogUniform::new(range).unwrap(), key, n, true, truth, false).unwrap()
    };
    // LogUniformSampler(10**6).sample(8192, true_classes=TC, seed=42), and so on.
    pins.check("log_uniform unique chunks", draw(1_000_000, 8192, Some(&TC)));
    pins.check("log_uniform unique most", draw(100_000, 50_000, Some(&TC)));
    pins.check("log_uniform unique 2^24", draw(1 << 24, 8192, None));
    pins.check("log_uniform unique bits", draw(1 << 25, 8192, None));
    pins.check("log_uniform unique 2^40", draw(1 << 40, 8192, None));
}

#[test]
fn uniform() {
    // UniformSampler(10**6).sample(64, true_classes=TC, seed=42)
    let s = sample(&Uniform::new(1_000_000).unwrap(), stateless_key(42), 64, true, Some(&TC), false);
    Pins::load().check("uniform unique", s.unwrap());
}

#[test]
fn zipf() {
    let pins = Pins::load();
    // ZipfSampler(10**6, 1.1).sample(8192, true_classes=TC, seed=42)
    let chunks = sample(&Zipf::new(1_000_000, 1.1).unwrap(), stateless_key(42), 8192, true, Some(&TC), false);
    pins.check("zipf unique chunks", chunks.unwrap());
    // ZipfSampler(10**9, 1.1).sample(64, true_classes=TC, seed=42), and sample(64, unique=False, seed=42).
    let zf = Zipf::new(1_000_000_000, 1.1).unwrap();
    pins.check("zipf unique", sample(&zf, stateless_key(42), 64, true, Some(&TC), false).unwrap());
    pins.check("zipf plain", sample(&zf, stateless_key(42), 64, false, None, false).unwrap());
}

#[test]
fn unigram() {
    // UnigramSampler(np.arange(1, 1001), distortion=0.75, num_reserved_ids=2).sample(64, true_classes=TC,
    // seed=42): TensorFlow's rules, in float64.
    let weights: Vec<f64> = (1..=1000).map(f64::from).collect();
    let ug = Unigram::tf(&weights, 0.75, 2, 1, 0, false).unwrap();
    let s = sample(&ug, stateless_key(42), 64, true, Some(&TC), false).unwrap();
    Pins::load().check("unigram unique", s);
}

#[test]
fn per_row() {
    let pins = Pins::load();
    // LogUniformSampler(1000).sample_per_row(TC, 8, remove_true=True, seed=42)
    let lu = LogUniform::new(1000).unwrap();
    let rows = sample_per_row(&lu, stateless_key(42), &TC, 2, 8, true, true).unwrap();
    pins.check_rows("log_uniform per row", rows);
    // ZipfSampler(10**9, 1.1).sample_per_row(TC, 8, seed=42)
    let zf = Zipf::new(1_000_000_000, 1.1).unwrap();
    let rows = sample_per_row(&zf, stateless_key(42), &TC, 2, 8, true, false).unwrap();
    pins.check_rows("zipf per row", rows);
}

#[test]
fn probability() {
    // ZipfSampler(10**9, 1.1).probability([0, 1, 999, 10**8, 10**9 - 1]) and
    // LogUniformSampler(2**62).probability([0, 2**40, 2**62 - 1]), to 1e-14 relative.
    let zf = Zipf::new(1_000_000_000, 1.1).unwrap();
    let zipf = sampler::probability(&zf, &[0, 1, 999, 100_000_000, 999_999_999]).unwrap();
    let lu = LogUniform::new(1 << 62).unwrap();
    let log_uniform = sampler::probability(&lu, &[0, 1 << 40, (1 << 62) - 1]).unwrap();
    let got: Vec<f64> = zipf.into_iter().chain(log_uniform).collect();
    close("probability", &got, &Pins::load().get("probability").floats(), 1e-14);
}

/// The pins of the Python test: its `PINS_JSON`, parsed.
struct Pins(Json);

impl Pins {
    fn load() -> Pins {
        let text = include_str!("test_value_stability.py");
        let start = text.find("PINS_JSON = r\"\"\"").expect("the Python test's PINS_JSON") + 16;
        let end = start + text[start..].find("\"\"\"").expect("the end of PINS_JSON");
        let mut parser = Parser { s: &text.as_bytes()[start..end], at: 0 };
        Pins(parser.value())
    }

    fn get(&self, name: &str) -> &Json {
        self.0.field(name).unwrap_or_else(|| panic!("no pin named {name:?} in the Python test"))
    }

    fn check(&self, name: &str, s: Sample) {
        let tries = [s.num_tries as i64];
        self.compare(name, &s.ids, &s.sampled_expected, s.true_expected.as_deref(), &tries);
    }

    fn check_rows(&self, name: &str, s: PerRowSample) {
        self.compare(name, &s.ids, &s.sampled_expected, Some(&s.true_expected), &s.num_tries);
    }

    /// What the Python test's `digest` keeps of a result, against its pin.
    fn compare(&self, name: &str, ids: &[i64], sampled: &[f32], truth: Option<&[f32]>, tries: &[i64]) {
        let pin = self.get(name);
        let field = |key: &str| pin.field(key).unwrap_or_else(|| panic!("{name}: no {key} in the pin"));
        assert_eq!(ids[..6], field("ids_head").ints(), "{name}: ids");
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        assert_eq!(sha256_hex(&bytes), field("ids_sha256").str(), "{name}: ids (SHA-256)");
        // A shared sample's num_tries is one number; a per-row sample's, one per row.
        let want_tries = match field("num_tries") {
            Json::Arr(_) => field("num_tries").ints(),
            one => vec![one.int()],
        };
        assert_eq!(tries, want_tries, "{name}: num_tries");
        let widen = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        close(name, &widen(&sampled[..6]), &field("sampled_expected_head").floats(), 1e-6);
        match (truth, field("true_expected")) {
            (None, Json::Null) => {}
            (Some(got), want @ Json::Arr(_)) => close(name, &widen(got), &want.floats(), 1e-6),
            (got, want) => panic!("{name}: true_expected is {got:?}, pinned {want:?}"),
        }
    }
}

/// `got` equals `want` to `rtol` relative, element by element (NumPy's `assert_allclose` with atol 0).
fn close(name: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * w.abs(), "{name}: element {i} is {g:e}, pinned {w:e}");
    }
}

/// A JSON value. Numbers keep their text: ids beyond 2^53 must not pass through a double.
#[derive(Debug)]
enum Json {
    Null,
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn field(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("expected a string, got {other:?}"),
        }
    }

    fn int(&self) -> i64 {
        match self {
            Json::Num(n) => n.parse().unwrap_or_else(|_| panic!("expected an integer, got {n}")),
            other => panic!("expected a number, got {other:?}"),
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            other => panic!("expected an array, got {other:?}"),
        }
    }

    fn ints(&self) -> Vec<i64> {
        self.items().iter().map(Json::int).collect()
    }

    fn floats(&self) -> Vec<f64> {
        let float = |x: &Json| match x {
            Json::Num(n) => n.parse().unwrap_or_else(|_| panic!("expected a number, got {n}")),
            other => panic!("expected a number, got {other:?}"),
        };
        self.items().iter().map(float).collect()
    }
}

/// A parser of the JSON that Python's `json.dumps` writes (strings without escapes are all the pins use).
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&mut self) -> u8 {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
        *self.s.get(self.at).expect("PINS_JSON ends early")
    }

    fn expect(&mut self, c: u8) {
        assert_eq!(self.peek(), c, "PINS_JSON: expected {:?} at byte {}", c as char, self.at);
        self.at += 1;
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'{' => {
                let mut fields = vec![];
                self.expect(b'{');
                while self.peek() != b'}' {
                    let key = self.string();
                    self.expect(b':');
                    fields.push((key, self.value()));
                    if self.peek() == b',' {
                        self.at += 1;
                    }
                }
                self.at += 1;
                Json::Obj(fields)
            }
            b'[' => {
                let mut items = vec![];
                self.expect(b'[');
                while self.peek() != b']' {
                    items.push(self.value());
                    if self.peek() == b',' {
                        self.at += 1;
                    }
                }
                self.at += 1;
                Json::Arr(items)
            }
            b'"' => Json::Str(self.string()),
            b'n' => {
                assert_eq!(&self.s[self.at..self.at + 4], b"null", "PINS_JSON at byte {}", self.at);
                self.at += 4;
                Json::Null
            }
            _ => {
                let start = self.at;
                while self.s.get(self.at).is_some_and(|c| b"+-.0123456789eE".contains(c)) {
                    self.at += 1;
                }
                assert!(self.at > start, "PINS_JSON: unexpected byte at {start}");
                Json::Num(String::from_utf8(self.s[start..self.at].to_vec()).unwrap())
            }
        }
    }

    fn string(&mut self) -> String {
        self.expect(b'"');
        let len = self.s[self.at..].iter().position(|&c| c == b'"').expect("PINS_JSON: an open string");
        let text = &self.s[self.at..self.at + len];
        assert!(!text.contains(&b'\\'), "PINS_JSON: escapes are not expected");
        self.at += len + 1;
        String::from_utf8(text.to_vec()).unwrap()
    }
}

/// SHA-256 of `data` in lower-case hex (FIPS 180-4), so that the ids are pinned by the same digest as in
/// the Python test without a dependency.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (&k, &wi) in K.iter().zip(&w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(k).wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_matches_the_standard() {
    // FIPS 180-4's examples, and a message of several blocks (digest from Python's hashlib).
    assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let long: Vec<u8> = (0..700).map(|i| i as u8).collect();
    assert_eq!(sha256_hex(&long), "513df58dd095240caa52ac490c29836736d4ef0133b40ac7b7e249abf7ecf2f7");
}
