//! A portable, versioned normal generator.
//!
//! Weights and inputs must be bitwise the same on every run and every machine,
//! so this does not depend on `rand`'s algorithms (which may change between
//! releases) or on the platform libm: xoshiro256++ seeded through splitmix64,
//! Box–Muller in f64 with the pure-Rust `libm`, rounded to f32.

/// 2^-26: below it libm's `sin` and `sincos` may round differently.
const TINY: f64 = 1.0 / (1u64 << 26) as f64;

/// xoshiro256++ with a Box–Muller normal sampler.
pub(crate) struct NormalRng {
    s: [u64; 4],
    spare: Option<f64>,
}

/// One step of splitmix64 (also the token-id generator, [`crate::Tokens::random`]).
pub(crate) fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, to derive one stream per parameter name.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

impl NormalRng {
    /// A generator for `seed`, optionally split off by `stream` (e.g. a
    /// parameter name's hash) so that streams do not depend on each other.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.rotate_left(17);
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        NormalRng { s, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1], 53 bits.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample.
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = libm::sqrt(-2.0 * libm::log(self.uniform()));
        let theta = 2.0 * std::f64::consts::PI * self.uniform();
        // One argument reduction for both. libm's `sincos` shares `sin`'s and
        // `cos`'s code paths bit for bit except that for 2^-27·√2 ≤ |x| < 2^-26
        // `sin` returns x where `sincos` evaluates its polynomial: there,
        // `sin` itself (pinned by `pinned_values` and every snapshot).
        let (sin, cos) = libm::sincos(theta);
        let sin = if theta < TINY { libm::sin(theta) } else { sin };
        self.spare = Some(r * sin);
        r * cos
    }

    /// `n` samples of N(0, std²), rounded to f32.
    pub(crate) fn fill(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a = NormalRng::new(7, 1).fill(1000, 0.2);
        let b = NormalRng::new(7, 1).fill(1000, 0.2);
        assert_eq!(a, b);
        let c = NormalRng::new(7, 2).fill(1000, 0.2);
        assert_ne!(a, c);
    }

    #[test]
    fn moments_look_normal() {
        let xs = NormalRng::new(1, 0).fill(200_000, 1.0);
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn sincos_is_sin_and_cos_bit_for_bit() {
        // Around the thresholds where libm's three functions branch, and a
        // sweep of the sampler's range (0, 2π].
        let mut xs: Vec<f64> = vec![
            1e-300, 1e-17, 7e-16, 1.05e-8, 1.053e-8, 1.49e-8, TINY, 1.5e-8,
        ];
        xs.extend((1..=200_000).map(|i| i as f64 * std::f64::consts::TAU / 200_000.0));
        for x in xs {
            let (s, c) = libm::sincos(x);
            let s = if x < TINY { libm::sin(x) } else { s };
            assert_eq!(s.to_bits(), libm::sin(x).to_bits(), "sin {x:e}");
            assert_eq!(c.to_bits(), libm::cos(x).to_bits(), "cos {x:e}");
        }
    }

    #[test]
    fn pinned_values() {
        // Pins the generator's output bits (recorded 2026-11-29): if this
        // changes, every weight, input and snapshot changes with it.
        let bits = |xs: Vec<f32>| xs.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(NormalRng::new(0, 0).fill(4, 1.0)),
            [3213742067, 1065449195, 1068930809, 1037214700]
        );
        assert_eq!(
            bits(NormalRng::new(7, 3).fill(2, 0.2)),
            [1027785759, 3195071760]
        );
    }
}
