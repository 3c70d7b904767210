//! Host-side arrays: the one copy of weights and inputs every backend starts from.

/// A dense, row-major f32 array on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps `data` as an array of `shape`.
    ///
    /// # Panics
    /// If the lengths disagree — a programming error, not an input error.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor: shape {shape:?} does not match {} values",
            data.len()
        );
        HostTensor { shape, data }
    }

    /// An array of `shape` filled with `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        HostTensor::new(shape, vec![value; n])
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// For a `[batch, seq, dim]` input: the rows `(b, s)` gathered into a
    /// `[rows.len(), 1, dim]` array (the `rows` strategy's input).
    pub fn gather_rows(&self, rows: &[crate::Row]) -> HostTensor {
        let [_, seq, dim] = self.shape[..] else {
            panic!(
                "gather_rows needs a [batch, seq, dim] array, got {:?}",
                self.shape
            )
        };
        let mut data = Vec::with_capacity(rows.len() * dim);
        for r in rows {
            let at = (r.batch * seq + r.pos) * dim;
            data.extend_from_slice(&self.data[at..at + dim]);
        }
        HostTensor::new(vec![rows.len(), 1, dim], data)
    }

    /// For a `[batch, seq, dim]` input: batch elements `batches`, positions `0..len`.
    pub fn select(&self, batches: &[usize], len: usize) -> HostTensor {
        let [_, seq, dim] = self.shape[..] else {
            panic!(
                "select needs a [batch, seq, dim] array, got {:?}",
                self.shape
            )
        };
        let mut data = Vec::with_capacity(batches.len() * len * dim);
        for &b in batches {
            let at = b * seq * dim;
            data.extend_from_slice(&self.data[at..at + len * dim]);
        }
        HostTensor::new(vec![batches.len(), len, dim], data)
    }

    /// A 2-d array transposed (`[a, b]` → `[b, a]`).
    pub fn transposed(&self) -> Result<HostTensor, String> {
        let [a, b] = self.shape[..] else {
            return Err(format!("transpose needs a 2-d array, got {:?}", self.shape));
        };
        let mut data = vec![0.0f32; a * b];
        for i in 0..a {
            for j in 0..b {
                data[j * a + i] = self.data[i * b + j];
            }
        }
        Ok(HostTensor::new(vec![b, a], data))
    }
}

/// Token ids, `[batch, seq]` row-major: a language model's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// `batch · seq` ids.
    pub ids: Vec<u32>,
    /// Real tokens per sequence (`batch` entries, each at most `seq`): an
    /// encoder's sequences of their own lengths, the rest of each row
    /// padding (id 0). Every entry is `seq` for sequences of one length.
    pub lengths: Vec<usize>,
}

impl Tokens {
    /// `batch × seq` ids drawn uniformly below `vocab` from `seed`
    /// (deterministic on every machine).
    pub fn random(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tokens {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let ids = (0..batch * seq)
            .map(|_| (crate::rng::splitmix64(&mut state) % vocab.max(1) as u64) as u32)
            .collect();
        Tokens {
            batch,
            seq,
            ids,
            lengths: vec![seq; batch],
        }
    }
}
