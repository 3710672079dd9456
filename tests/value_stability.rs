//! Value stability of the public Rust API: seeded outputs pinned to the numbers that
//! `tests/test_value_stability.py` pins for the Python API (rand_distr's `tests/value_stability.rs` is the
//! model).
//!
//! A Rust caller reproduces a Python call by building the same distribution and taking the key of the call
//! as the Python API does (`sampler::keys`): a call with `seed=s` is stateless and uses
//! `stateless_key(s)`; call `i` without a seed, on a sampler built with `seed=s`, uses the i-th key of
//! `Keys::new(Some(s))`. The Python samplers map to `LogUniform::new`, `Uniform::new`, `Zipf::new` and
//! (`UnigramSampler`) `Unigram::tf(.., float32 = false)`; `true_classes` go flattened, row-major.
//!
//! Pinned as the Python test pins them: the ids exactly (the SHA-256 of their little-endian int64 bytes,
//! and the first six for a readable failure), `num_tries` exactly, expected counts to 1e-6 relative
//! (they go through the platform's libm in places). If a pin fails, either the change is a bug or it
//! changes every user's seeded results: then both files are regenerated together (see the Python file)
//! and the change goes into the release notes.

use zipfnce::sampler::{
    self, sample, sample_per_row, stateless_key, Keys, LogUniform, PerRowSample, Sample, Uniform, Unigram,
    Zipf,
};

/// The Python test's `TC`, `[[0, 5], [17, 99], [3, 3], [998, 1]]`, flattened.
const TC: [i64; 8] = [0, 5, 17, 99, 3, 3, 998, 1];

/// What is pinned of a result (the Python test's `digest`).
struct Pin {
    ids_sha256: &'static str,
    ids_head: [i64; 6],
    sampled_expected_head: [f64; 6],
    true_expected: Option<&'static [f64]>,
    /// One number for a shared sample, one per row for a per-row one.
    num_tries: &'static [i64],
}

fn check(name: &str, s: Sample, pin: &Pin) {
    let tries = [s.num_tries as i64];
    compare(name, &s.ids, &s.sampled_expected, s.true_expected.as_deref(), &tries, pin);
}

fn check_rows(name: &str, s: PerRowSample, pin: &Pin) {
    compare(name, &s.ids, &s.sampled_expected, Some(&s.true_expected), &s.num_tries, pin);
}

fn compare(
    name: &str,
    ids: &[i64],
    sampled: &[f32],
    true_expected: Option<&[f32]>,
    tries: &[i64],
    pin: &Pin,
) {
    assert_eq!(ids[..6], pin.ids_head, "{name}: ids");
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    assert_eq!(sha256_hex(&bytes), pin.ids_sha256, "{name}: ids (SHA-256)");
    assert_eq!(tries, pin.num_tries, "{name}: num_tries");
    let widen = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    close(name, &widen(&sampled[..6]), &pin.sampled_expected_head, 1e-6);
    match (true_expected, pin.true_expected) {
        (Some(got), Some(want)) => close(name, &widen(got), want, 1e-6),
        (None, None) => {}
        (got, _) => panic!("{name}: true_expected is {got:?}, pinned {:?}", pin.true_expected),
    }
}

/// `got` equals `want` to `rtol` relative, element by element (NumPy's `assert_allclose` with atol 0).
fn close(name: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rtol * w.abs(), "{name}: element {i} is {g:e}, pinned {w:e}");
    }
}

#[test]
fn log_uniform() {
    let lu = LogUniform::new(1000).unwrap();
    // lu.sample(64, true_classes=TC, seed=42)
    check(
        "log_uniform unique",
        sample(&lu, stateless_key(42), 64, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "9c8e9d74ff09041fcd19b2c5fd6d8c424e1d628decef0c1261ccc55e0c5d91a3",
            ids_head: [3, 7, 8, 241, 0, 75],
            sampled_expected_head: [
                0.9624911546707153,
                0.8208509087562561,
                0.7849268913269043,
                0.05795864388346672,
                0.9999743700027466,
                0.1725359410047531,
            ],
            true_expected: Some(&[
                0.9999743700027466,
                0.8952842354774475,
                0.5441850423812866,
                0.13422374427318573,
                0.9624911546707153,
                0.9624911546707153,
                0.014378310181200504,
                0.9976376891136169,
            ]),
            num_tries: &[100],
        },
    );
    // lu.sample(64, unique=False, true_classes=TC, seed=42)
    check(
        "log_uniform plain",
        sample(&lu, stateless_key(42), 64, false, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "9532f25bfc401a6b83b67b15b4efe11f3436fab2f5f315bb44c64fe221a6b076",
            ids_head: [3, 7, 7, 8, 241, 0],
            sampled_expected_head: [
                2.0671145915985107,
                1.0910959243774414,
                1.0910959243774414,
                0.9760185480117798,
                0.0382005013525486,
                6.42104434967041,
            ],
            true_expected: Some(&[
                6.42104434967041,
                1.427991509437561,
                0.5008575916290283,
                0.09217596799135208,
                2.0671145915985107,
                2.0671145915985107,
                0.009268243797123432,
                3.756070137023926,
            ]),
            num_tries: &[64],
        },
    );
    // lu.sample(64, true_classes=TC, remove_true=True, seed=42)
    check(
        "log_uniform remove_true",
        sample(&lu, stateless_key(42), 64, true, Some(&TC), true).unwrap(),
        &Pin {
            ids_sha256: "747ad98ba84a866fc18520c748af2c8cd1859947e0b27c9c4a2fc35afed21c13",
            ids_head: [7, 8, 241, 75, 197, 41],
            sampled_expected_head: [
                0.848302960395813,
                0.8145524263381958,
                0.0632365420460701,
                0.1871834695339203,
                0.07670944929122925,
                0.3116282820701599,
            ],
            true_expected: Some(&[
                0.9998749494552612,
                0.8531038761138916,
                0.4871736764907837,
                0.11530245840549469,
                0.9386218190193176,
                0.9386218190193176,
                0.012234816327691078,
                0.9941475987434387,
            ]),
            num_tries: &[85],
        },
    );
    // LogUniformSampler(2**62, seed=0).sample(32, true_classes=TC, seed=7)
    check(
        "log_uniform 2^62",
        sample(&LogUniform::new(1 << 62).unwrap(), stateless_key(7), 32, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "149116d8b98d7769b0f972957998ee75e4abbc12e58273d9d4ddebea45d2bb76",
            ids_head: [908050928472, 267052628295, 60224, 175831132650351571, 82209573, 498290549],
            sampled_expected_head: [
                8.20016580679872e-13,
                2.7882774214504913e-12,
                1.2363812857074663e-05,
                4.234840481471381e-18,
                9.057543159940451e-09,
                1.4943426496216716e-09,
            ],
            true_expected: Some(&[
                0.5161290168762207,
                0.11478318274021149,
                0.040259361267089844,
                0.00740918330848217,
                0.16615644097328186,
                0.16615644097328186,
                0.0007449893746525049,
                0.30191612243652344,
            ]),
            num_tries: &[32],
        },
    );
    // lu.sample(20_000, unique=False, seed=3)
    check(
        "log_uniform parallel",
        sample(&lu, stateless_key(3), 20_000, false, None, false).unwrap(),
        &Pin {
            ids_sha256: "5af251d8348c9ab2c9b6fea1c169277445f79308115d74772d0f77a2c203ed38",
            ids_head: [316, 4, 127, 21, 0, 2],
            sampled_expected_head: [
                9.117732048034668,
                527.798583984375,
                22.528343200683594,
                128.6824188232422,
                2006.576416015625,
                832.804443359375,
            ],
            true_expected: None,
            num_tries: &[20000],
        },
    );
    // LogUniformSampler(1000, seed=5).sample(16): the first call of the stream of seed 5
    check(
        "log_uniform stream",
        sample(&lu, Keys::new(Some(5)).next_key(), 16, true, None, false).unwrap(),
        &Pin {
            ids_sha256: "3d299f89fef60f112f4a39d2d5a2701c114c8860a37e0605b0344be01582a601",
            ids_head: [20, 2, 292, 154, 89, 0],
            sampled_expected_head: [
                0.1145087331533432,
                0.5349342226982117,
                0.008839862421154976,
                0.01662306673824787,
                0.02840106561779976,
                0.8508893847465515,
            ],
            true_expected: None,
            num_tries: &[18],
        },
    );
}

#[test]
fn log_uniform_unique_over_several_chunks() {
    // Unique draws over several chunks, which skip the draws of collected heads: byte map (with and without
    // heavy rejection, and at its largest range), bit map, hash set with the huge-range draw.
    let key = stateless_key(42);
    // LogUniformSampler(10**6).sample(8192, true_classes=TC, seed=42)
    check(
        "log_uniform unique chunks",
        sample(&LogUniform::new(1_000_000).unwrap(), key, 8192, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "363a7eb3f66334ed92a13fa4eed24542ee1ac2ff52d834d6b0c7f6f8e31af4d8",
            ids_head: [23, 76, 70, 82, 58654, 2],
            sampled_expected_head: [
                1.0,
                0.9999996423721313,
                0.9999998807907104,
                0.9999988675117493,
                0.01932087540626526,
                1.0,
            ],
            true_expected: Some(&[1.0, 1.0, 1.0, 0.9999886751174927, 1.0, 1.0, 0.6817696690559387, 1.0]),
            num_tries: &[15810],
        },
    );
    // LogUniformSampler(10**5).sample(50_000, true_classes=TC, seed=42)
    check(
        "log_uniform unique most",
        sample(&LogUniform::new(100_000).unwrap(), key, 50_000, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "10ca4351f8faee08c0089e5c342cb2cd49a52d128aeaee364adf576ba47e4e88",
            ids_head: [13, 36, 33, 38, 9409, 1],
            sampled_expected_head: [1.0, 1.0, 1.0, 1.0, 0.9419681429862976, 1.0],
            true_expected: Some(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            num_tries: &[308424],
        },
    );
    // LogUniformSampler(2**24).sample(8192, seed=42)
    check(
        "log_uniform unique 2^24",
        sample(&LogUniform::new(1 << 24).unwrap(), key, 8192, true, None, false).unwrap(),
        &Pin {
            ids_sha256: "a4821bafcacfba621aefd07486354f4038d7c3f594ec6d2de88b43bb5cb2e3fd",
            ids_head: [46, 186, 169, 205, 551585, 2],
            sampled_expected_head: [
                0.9999999403953552,
                0.9857207536697388,
                0.9906527400016785,
                0.9788886308670044,
                0.001443061395548284,
                1.0,
            ],
            true_expected: None,
            num_tries: &[13251],
        },
    );
    // LogUniformSampler(2**25).sample(8192, seed=42)
    check(
        "log_uniform unique bits",
        sample(&LogUniform::new(1 << 25).unwrap(), key, 8192, true, None, false).unwrap(),
        &Pin {
            ids_sha256: "1c160a8d45a198881b061a24bc65602e8b16af5a2b0a8241c266f45028f879c8",
            ids_head: [54, 232, 209, 256, 956856, 2],
            sampled_expected_head: [
                0.9999983906745911,
                0.9580690264701843,
                0.9703512191772461,
                0.9436447024345398,
                0.0007735949475318193,
                1.0,
            ],
            true_expected: None,
            num_tries: &[12832],
        },
    );
    // LogUniformSampler(2**40).sample(8192, seed=42)
    check(
        "log_uniform unique 2^40",
        sample(&LogUniform::new(1 << 40).unwrap(), key, 8192, true, None, false).unwrap(),
        &Pin {
            ids_sha256: "2f67f893308738a07e8c6985a4bf1edc64456a86a17711fc21ed806353b84f83",
            ids_head: [612, 6155, 5226, 7207, 3709843165, 8],
            sampled_expected_head: [
                0.45345523953437805,
                0.058425046503543854,
                0.06844493746757507,
                0.050116173923015594,
                9.990404237214534e-08,
                1.0,
            ],
            true_expected: None,
            num_tries: &[10276],
        },
    );
}

#[test]
fn uniform() {
    // UniformSampler(10**6, seed=0).sample(64, true_classes=TC, seed=42)
    check(
        "uniform unique",
        sample(&Uniform::new(1_000_000).unwrap(), stateless_key(42), 64, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "c215c92896877621c49ca4377463e767ee48aa4e6a83947bb48dfd400f41c0df",
            ids_head: [231532, 314696, 308799, 320388, 794717, 79946],
            sampled_expected_head: [
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
            ],
            true_expected: Some(&[
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
                6.399999983841553e-05,
            ]),
            num_tries: &[64],
        },
    );
}

#[test]
fn zipf() {
    let zf = Zipf::new(1_000_000_000, 1.1).unwrap();
    // ZipfSampler(10**6, 1.1).sample(8192, true_classes=TC, seed=42)
    check(
        "zipf unique chunks",
        sample(&Zipf::new(1_000_000, 1.1).unwrap(), stateless_key(42), 8192, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "56006bb247ce869cb845de54bbeec23530cd4d8387e71e9704edefa1e4296fc0",
            ids_head: [3802, 911, 1002, 832, 2, 101134],
            sampled_expected_head: [
                0.3148576021194458,
                0.8377871513366699,
                0.8056637644767761,
                0.8659408092498779,
                1.0,
                0.010189707390964031,
            ],
            true_expected: Some(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8070611953735352, 1.0]),
            num_tries: &[26472],
        },
    );
    // ZipfSampler(10**9, 1.1, seed=0).sample(64, true_classes=TC, seed=42)
    check(
        "zipf unique",
        sample(&zf, stateless_key(42), 64, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "6dbfb94c4b255fa7952f800a4bdc0838652af6ab30cdda3ff6532adc3fbd08de",
            ids_head: [45375, 5863, 6691, 5169, 3, 9481223],
            sampled_expected_head: [
                6.712459435220808e-05,
                0.0006371692288666964,
                0.0005510298651643097,
                0.0007318267016671598,
                0.8591419458389282,
                1.8830159831395576e-07,
            ],
            true_expected: Some(&[
                0.9999184608459473,
                0.7133246064186096,
                0.3100751042366028,
                0.05462738871574402,
                0.8591419458389282,
                0.8591419458389282,
                0.004455794580280781,
                0.9858719706535339,
            ]),
            num_tries: &[83],
        },
    );
    // ZipfSampler(10**9, 1.1, seed=0).sample(64, unique=False, seed=42)
    check(
        "zipf plain",
        sample(&zf, stateless_key(42), 64, false, None, false).unwrap(),
        &Pin {
            ids_sha256: "d85bb228106bb2b68f633f8a55c69c0dbc437ba89034ce7e5d37accbef248fa1",
            ids_head: [45375, 5863, 6691, 5169, 3, 9481223],
            sampled_expected_head: [
                5.176043850951828e-05,
                0.0004914659075438976,
                0.0004250061756465584,
                0.0005645041819661856,
                1.4936223030090332,
                1.4519642377308628e-07,
            ],
            true_expected: None,
            num_tries: &[64],
        },
    );
}

#[test]
fn unigram() {
    // UnigramSampler(weights, distortion=0.75, num_reserved_ids=2): TensorFlow's rules in float64.
    let weights: Vec<f64> = (1..=1000).map(f64::from).collect();
    let ug = Unigram::tf(&weights, 0.75, 2, 1, 0, false).unwrap();
    // ug.sample(64, true_classes=TC, seed=42)
    check(
        "unigram unique",
        sample(&ug, stateless_key(42), 64, true, Some(&TC), false).unwrap(),
        &Pin {
            ids_sha256: "27865480e331187f0a4be493acda9b0a7031c288a6da58af8d2380f8ef7c214b",
            ids_head: [932, 315, 309, 321, 796, 80],
            sampled_expected_head: [
                0.10368640720844269,
                0.04727010056376457,
                0.046606872230768204,
                0.04792972281575203,
                0.09265221655368805,
                0.01705102249979973,
            ],
            true_expected: Some(&[
                0.0,
                0.0018338134977966547,
                0.005178248044103384,
                0.020012730732560158,
                0.001090791542083025,
                0.001090791542083025,
                0.1088477298617363,
                0.0,
            ]),
            num_tries: &[66],
        },
    );
}

#[test]
fn per_row() {
    let lu = LogUniform::new(1000).unwrap();
    let zf = Zipf::new(1_000_000_000, 1.1).unwrap();
    // lu.sample_per_row(TC, 8, remove_true=True, seed=42)
    check_rows(
        "log_uniform per row",
        sample_per_row(&lu, stateless_key(42), &TC, 2, 8, true, true).unwrap(),
        &Pin {
            ids_sha256: "94ba4c966998636ac97d3c7c1e28f7304481f840cfeca52d0cfa6bb8e184e17e",
            ids_head: [331, 202, 2, 141, 124, 4],
            sampled_expected_head: [
                0.003969370387494564,
                0.006485588848590851,
                0.37968704104423523,
                0.009261895902454853,
                0.010516507551074028,
                0.24063067138195038,
            ],
            true_expected: Some(&[
                0.8026305437088013,
                0.17849893867969513,
                0.07555972039699554,
                0.014309508726000786,
                0.25838932394981384,
                0.25838932394981384,
                0.0013025921070948243,
                0.41977038979530334,
            ]),
            num_tries: &[8, 10, 8, 9],
        },
    );
    // zf.sample_per_row(TC, 8, seed=42)
    check_rows(
        "zipf per row",
        sample_per_row(&zf, stateless_key(42), &TC, 2, 8, true, false).unwrap(),
        &Pin {
            ids_sha256: "9cc1870f3690ea59ef4ab028251bacf579b674cd7aff33cd840a412e9bf1e3b9",
            ids_head: [2, 8524257, 4, 382011, 9, 11],
            sampled_expected_head: [
                0.2562025189399719,
                2.0403023270887388e-08,
                0.14606621861457825,
                6.210578931131749e-07,
                0.06814230233430862,
                0.05575931444764137,
            ],
            true_expected: Some(&[
                0.8578607439994812,
                0.11952270567417145,
                0.03944844752550125,
                0.006072872783988714,
                0.19146426022052765,
                0.19146426022052765,
                0.0004304222820792347,
                0.40020617842674255,
            ]),
            num_tries: &[8, 9, 9, 8],
        },
    );
}

#[test]
fn probability() {
    // ZipfSampler(10**9, 1.1).probability([0, 1, 999, 10**8, 10**9 - 1]) and
    // LogUniformSampler(2**62).probability([0, 2**40, 2**62 - 1]).
    let zipf =
        sampler::probability(&Zipf::new(1_000_000_000, 1.1).unwrap(), &[0, 1, 999, 100_000_000, 999_999_999])
            .unwrap();
    let log_uniform =
        sampler::probability(&LogUniform::new(1 << 62).unwrap(), &[0, 1 << 40, (1 << 62) - 1]).unwrap();
    let got: Vec<f64> = zipf.into_iter().chain(log_uniform).collect();
    close(
        "probability",
        &got,
        &[
            0.10723259106144789,
            0.050025772614152905,
            5.374360566877162e-05,
            1.6995220171378065e-10,
            1.3499783385978868e-11,
            0.016129032258064516,
            2.116328219291613e-14,
            5.045719669567347e-21,
        ],
        1e-14,
    );
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
