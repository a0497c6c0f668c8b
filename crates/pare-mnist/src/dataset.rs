//! Image classification data sets in memory: NHWC `f32` images and `u8` class labels, with
//! Keras-style validation split, subsets and seeded shuffled batches.

use ndarray::{Array4, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{MnistError, Result};

/// Images and their class labels.
///
/// Images are an [`Array4<f32>`] of shape `[n, height, width, channels]` (NHWC, as TensorFlow
/// and TFLite lay them out; MNIST is `[n, 28, 28, 1]` with pixels in [0, 1]), always in standard
/// (row-major, contiguous) layout so that one image is one contiguous slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    images: Array4<f32>,
    labels: Vec<u8>,
}

impl Dataset {
    /// A data set from NHWC images and one label per image.
    ///
    /// Images in another memory layout are copied into standard layout.
    ///
    /// # Errors
    /// [`MnistError::LengthMismatch`] if the number of images and labels differ.
    pub fn new(images: Array4<f32>, labels: Vec<u8>) -> Result<Self> {
        let n = images.len_of(Axis(0));
        if n != labels.len() {
            return Err(MnistError::LengthMismatch {
                images: n,
                labels: labels.len(),
            });
        }
        let images = if images.is_standard_layout() {
            images
        } else {
            images.as_standard_layout().into_owned()
        };
        Ok(Self { images, labels })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images, `[n, height, width, channels]`.
    pub fn images(&self) -> &Array4<f32> {
        &self.images
    }

    /// The labels, one class index per image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The labels as `usize` class indices (what a sparse cross-entropy takes).
    pub fn labels_usize(&self) -> Vec<usize> {
        self.labels.iter().map(|&l| usize::from(l)).collect()
    }

    /// Shape of one image: `[height, width, channels]`.
    pub fn image_shape(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }

    /// Images and labels, by value.
    pub fn into_parts(self) -> (Array4<f32>, Vec<u8>) {
        (self.images, self.labels)
    }

    /// The first `min(n, len)` examples, like `x[:n]`.
    pub fn take(&self, n: usize) -> Dataset {
        self.range(0, n.min(self.len()))
    }

    /// Splits off the last `fraction` of the examples as a validation set, exactly as Keras'
    /// `fit(validation_split=fraction)` does: no shuffling, the first
    /// `floor(n · (1 − fraction))` examples train, the rest validate.
    ///
    /// Returns `(train, validation)`.
    ///
    /// # Errors
    /// [`MnistError::BadFraction`] unless `0 < fraction < 1`; [`MnistError::EmptySplit`] if
    /// either part would be empty (Keras raises then too).
    pub fn split_validation(&self, fraction: f64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(MnistError::BadFraction { fraction });
        }
        let n = self.len();
        // Keras: `split_at = int(batch_dim * (1.0 - validation_split))`, in float64.
        let split_at = (n as f64 * (1.0 - fraction)).floor() as usize;
        if split_at == 0 || split_at >= n {
            return Err(MnistError::EmptySplit { len: n, fraction });
        }
        Ok((self.range(0, split_at), self.range(split_at, n)))
    }

    /// The examples at `indices`, in that order (repeats allowed).
    ///
    /// # Errors
    /// [`MnistError::IndexOutOfRange`] for an index `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let batch = self.gather(indices)?;
        Ok(Dataset {
            images: batch.images,
            labels: batch.labels,
        })
    }

    /// The images and labels at `indices` as one batch.
    ///
    /// # Errors
    /// [`MnistError::IndexOutOfRange`] for an index `>= len()`.
    pub fn gather(&self, indices: &[usize]) -> Result<Batch> {
        self.check_indices(indices)?;
        Ok(self.gather_unchecked(indices.to_vec()))
    }

    /// The images at `indices` as a contiguous `[indices.len(), h, w, c]` array: one `memcpy`
    /// per image.
    ///
    /// # Errors
    /// [`MnistError::IndexOutOfRange`] for an index `>= len()`.
    pub fn gather_images(&self, indices: &[usize]) -> Result<Array4<f32>> {
        self.check_indices(indices)?;
        Ok(self.gather_images_unchecked(indices))
    }

    /// Batches of `batch_size` examples for one epoch (the last one may be smaller), in order
    /// or shuffled; see [`Batcher`].
    ///
    /// # Errors
    /// [`MnistError::BadBatchSize`] if `batch_size` is zero.
    pub fn batches(&self, batch_size: usize, shuffle: Shuffle, epoch: u64) -> Result<Batches<'_>> {
        let batcher = Batcher::new(self.len(), batch_size, shuffle)?;
        Ok(Batches {
            dataset: self,
            indices: batcher.epoch(epoch),
        })
    }

    fn check_indices(&self, indices: &[usize]) -> Result<()> {
        let len = self.len();
        match indices.iter().find(|&&i| i >= len) {
            Some(&index) => Err(MnistError::IndexOutOfRange { index, len }),
            None => Ok(()),
        }
    }

    fn range(&self, start: usize, end: usize) -> Dataset {
        let images = self
            .images
            .slice_axis(Axis(0), (start..end).into())
            .to_owned();
        Dataset {
            images,
            labels: self.labels[start..end].to_vec(),
        }
    }

    /// `indices` must all be `< len()`.
    fn gather_unchecked(&self, indices: Vec<usize>) -> Batch {
        let images = self.gather_images_unchecked(&indices);
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Batch {
            indices,
            images,
            labels,
        }
    }

    fn gather_images_unchecked(&self, indices: &[usize]) -> Array4<f32> {
        let [h, w, c] = self.image_shape();
        let per_image = h * w * c;
        let all = self
            .images
            .as_slice()
            .expect("Dataset invariant: images are in standard layout");
        let mut out = Vec::with_capacity(indices.len() * per_image);
        for &i in indices {
            out.extend_from_slice(&all[i * per_image..(i + 1) * per_image]);
        }
        Array4::from_shape_vec((indices.len(), h, w, c), out)
            .expect("gather: buffer holds indices.len() whole images")
    }
}

/// A batch of examples: the images, their labels and where they came from in the data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Positions of these examples in the data set.
    pub indices: Vec<usize>,
    /// Images, `[batch, height, width, channels]`, contiguous.
    pub images: Array4<f32>,
    /// Labels, one per image.
    pub labels: Vec<u8>,
}

impl Batch {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The labels as `usize` class indices.
    pub fn labels_usize(&self) -> Vec<usize> {
        self.labels.iter().map(|&l| usize::from(l)).collect()
    }
}

/// Whether to visit a data set in order or shuffled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shuffle {
    /// In order, `0..len`, every epoch.
    #[default]
    None,
    /// A new permutation every epoch, a pure function of `(seed, epoch)`.
    Seeded {
        /// The run's seed.
        seed: u64,
    },
}

/// Splits `0..len` into batches of example indices, one epoch at a time.
///
/// Every index appears exactly once per epoch; the last batch keeps the remainder (Keras does
/// not drop it). With [`Shuffle::Seeded`] the order of epoch `e` is a fixed permutation drawn
/// from `StdRng::seed_from_u64(seed ^ splitmix64(e))`, so a run is reproducible and every epoch
/// differs. (`StdRng`'s algorithm may change between `rand` releases, and orders with it.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batcher {
    len: usize,
    batch_size: usize,
    shuffle: Shuffle,
}

impl Batcher {
    /// Batches of `batch_size` over `len` examples.
    ///
    /// # Errors
    /// [`MnistError::BadBatchSize`] if `batch_size` is zero.
    pub fn new(len: usize, batch_size: usize, shuffle: Shuffle) -> Result<Self> {
        if batch_size == 0 {
            return Err(MnistError::BadBatchSize { batch_size });
        }
        Ok(Self {
            len,
            batch_size,
            shuffle,
        })
    }

    /// Number of examples per epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Examples per batch (the last batch may have fewer).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The shuffling mode.
    pub fn shuffle(&self) -> Shuffle {
        self.shuffle
    }

    /// Batches per epoch, `ceil(len / batch_size)`.
    pub fn num_batches(&self) -> usize {
        self.len.div_ceil(self.batch_size)
    }

    /// The order in which epoch `epoch` visits the examples: a permutation of `0..len`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if let Shuffle::Seeded { seed } = self.shuffle {
            // splitmix64 is a bijection, so distinct epochs always get distinct seeds.
            let mut rng = StdRng::seed_from_u64(seed ^ splitmix64(epoch));
            order.shuffle(&mut rng);
        }
        order
    }

    /// The index batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> IndexBatches {
        IndexBatches {
            order: self.order(epoch),
            batch_size: self.batch_size,
            pos: 0,
        }
    }
}

/// splitmix64's output function (Steele, Lea & Flood 2014): spreads consecutive epoch numbers
/// over all 64 bits before they are mixed with the seed.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Iterator over one epoch's batches of example indices, from [`Batcher::epoch`].
#[derive(Debug, Clone)]
pub struct IndexBatches {
    order: Vec<usize>,
    batch_size: usize,
    pos: usize,
}

impl IndexBatches {
    /// The whole epoch's order, including batches already yielded.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for IndexBatches {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let batch = self.order[self.pos..end].to_vec();
        self.pos = end;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.order.len() - self.pos).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for IndexBatches {}

/// Iterator over one epoch's [`Batch`]es of a [`Dataset`], from [`Dataset::batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    dataset: &'a Dataset,
    indices: IndexBatches,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        // Indices come from a permutation of 0..len, so they are in range.
        self.indices
            .next()
            .map(|idx| self.dataset.gather_unchecked(idx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.indices.size_hint()
    }
}

impl ExactSizeIterator for Batches<'_> {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use approx::assert_abs_diff_eq;
    use ndarray::{Array4, s};

    use super::*;

    /// `n` images of 2x3x1 whose pixels encode their index: image i is `i + k/10`.
    fn numbered(n: usize) -> Dataset {
        let images = Array4::from_shape_fn((n, 2, 3, 1), |(i, y, x, _)| {
            i as f32 + (y * 3 + x) as f32 / 10.0
        });
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Dataset::new(images, labels).unwrap()
    }

    fn index_of(image: ndarray::ArrayView3<f32>) -> usize {
        image[[0, 0, 0]] as usize
    }

    #[test]
    fn new_checks_lengths_and_fixes_layout() {
        let err = Dataset::new(Array4::zeros((3, 2, 2, 1)), vec![0; 2]).unwrap_err();
        assert!(
            matches!(
                err,
                MnistError::LengthMismatch {
                    images: 3,
                    labels: 2
                }
            ),
            "{err:?}"
        );

        // A transposed (non-standard) view becomes standard layout with the same values.
        let a = Array4::from_shape_fn((2, 3, 4, 1), |(n, y, x, c)| {
            (n * 100 + y * 10 + x + c) as f32
        });
        let t = a.clone().permuted_axes([0, 2, 1, 3]);
        assert!(!t.is_standard_layout());
        let d = Dataset::new(t.clone(), vec![0, 1]).unwrap();
        assert!(d.images().is_standard_layout());
        assert_eq!(d.images(), &t);
        assert_eq!(d.image_shape(), [4, 3, 1]);
        assert_eq!(
            d.gather_images(&[1]).unwrap().slice(s![0, .., .., ..]),
            t.slice(s![1, .., .., ..])
        );
    }

    #[test]
    fn take_and_labels() {
        let d = numbered(12);
        assert_eq!(d.len(), 12);
        let t = d.take(5);
        assert_eq!(t.len(), 5);
        assert_eq!(t.labels(), &[0, 1, 2, 3, 4]);
        assert_eq!(t.labels_usize(), vec![0, 1, 2, 3, 4]);
        assert_eq!(t.images(), &d.images().slice(s![..5, .., .., ..]));
        assert_eq!(d.take(100).len(), 12);
        assert!(d.take(0).is_empty());
    }

    #[test]
    fn split_validation_holds_out_the_end_like_keras() {
        // Keras: split_at = int(n * (1 - f)). n=10, f=0.25 -> int(7.5) = 7.
        let d = numbered(10);
        let (train, val) = d.split_validation(0.25).unwrap();
        assert_eq!((train.len(), val.len()), (7, 3));
        assert_eq!(val.labels(), &[7, 8, 9]);
        assert_abs_diff_eq!(val.images()[[0, 0, 0, 0]], 7.0, epsilon = 0.0);
        // n=60000, f=0.1 -> int(54000.000000000004)... float64 gives 54000 exactly.
        let (train, val) = numbered(60_000).split_validation(0.1).unwrap();
        assert_eq!((train.len(), val.len()), (54_000, 6_000));
        // n=3, f=0.5 -> int(1.5) = 1.
        let (train, val) = numbered(3).split_validation(0.5).unwrap();
        assert_eq!((train.len(), val.len()), (1, 2));
    }

    #[test]
    fn split_validation_rejects_bad_fractions() {
        let d = numbered(10);
        for f in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = d.split_validation(f).unwrap_err();
            assert!(
                matches!(err, MnistError::BadFraction { .. }),
                "{f}: {err:?}"
            );
        }
        // 10 * (1 - 0.99) = 0.1 -> nothing left to train on.
        let err = d.split_validation(0.99).unwrap_err();
        assert!(
            matches!(err, MnistError::EmptySplit { len: 10, .. }),
            "{err:?}"
        );
        // 10 * (1 - 0.01) = 9.9 -> 9 train, 1 validation: fine.
        assert_eq!(d.split_validation(0.01).unwrap().1.len(), 1);
        let err = numbered(1).split_validation(0.5).unwrap_err();
        assert!(
            matches!(err, MnistError::EmptySplit { len: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn subset_and_gather_pick_the_right_examples() {
        let d = numbered(9);
        let idx = [8, 0, 3, 3];
        let sub = d.subset(&idx).unwrap();
        assert_eq!(sub.labels(), &[8, 0, 3, 3]);
        for (row, &i) in idx.iter().enumerate() {
            assert_eq!(
                sub.images().slice(s![row, .., .., ..]),
                d.images().slice(s![i, .., .., ..])
            );
        }
        let b = d.gather(&idx).unwrap();
        assert_eq!(b.indices, idx);
        assert_eq!(&b.images, sub.images());
        assert_eq!(b.labels_usize(), vec![8, 0, 3, 3]);
        assert_eq!(d.gather_images(&idx).unwrap(), b.images);
        assert!(d.gather(&[]).unwrap().is_empty());

        for err in [d.subset(&[0, 9]).unwrap_err(), d.gather(&[42]).unwrap_err()] {
            assert!(
                matches!(err, MnistError::IndexOutOfRange { len: 9, .. }),
                "{err:?}"
            );
        }
        let err = d.gather_images(&[usize::MAX]).unwrap_err();
        assert!(matches!(
            err,
            MnistError::IndexOutOfRange {
                index: usize::MAX,
                len: 9
            }
        ));
    }

    #[test]
    fn batch_size_zero_is_an_error() {
        let err = Batcher::new(10, 0, Shuffle::None).unwrap_err();
        assert!(
            matches!(err, MnistError::BadBatchSize { batch_size: 0 }),
            "{err:?}"
        );
        let err = numbered(3)
            .batches(0, Shuffle::Seeded { seed: 1 }, 0)
            .unwrap_err();
        assert!(
            matches!(err, MnistError::BadBatchSize { batch_size: 0 }),
            "{err:?}"
        );
    }

    #[test]
    fn every_index_once_per_epoch_and_last_partial_batch_kept() {
        for (len, bs) in [
            (1, 1),
            (7, 3),
            (63, 8),
            (65, 64),
            (64, 64),
            (10, 100),
            (0, 4),
        ] {
            for shuffle in [Shuffle::None, Shuffle::Seeded { seed: 7 }] {
                let b = Batcher::new(len, bs, shuffle).unwrap();
                for epoch in 0..3 {
                    let batches: Vec<Vec<usize>> = b.epoch(epoch).collect();
                    assert_eq!(batches.len(), len.div_ceil(bs));
                    assert_eq!(b.epoch(epoch).len(), b.num_batches());
                    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
                    if let Some((last, full)) = sizes.split_last() {
                        assert!(full.iter().all(|&s| s == bs), "{len} {bs} {sizes:?}");
                        assert_eq!(*last, len - bs * full.len());
                    }
                    let mut seen: Vec<usize> = batches.concat();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..len).collect::<Vec<_>>(), "{len} {bs} {shuffle:?}");
                }
            }
        }
    }

    #[test]
    fn unshuffled_order_is_sequential() {
        let b = Batcher::new(5, 2, Shuffle::None).unwrap();
        assert_eq!(
            b.epoch(3).collect::<Vec<_>>(),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[test]
    fn shuffle_is_reproducible_and_differs_between_epochs_and_seeds() {
        let len = 1000;
        let b = Batcher::new(len, 32, Shuffle::Seeded { seed: 42 }).unwrap();
        let again = Batcher::new(len, 32, Shuffle::Seeded { seed: 42 }).unwrap();
        let other = Batcher::new(len, 32, Shuffle::Seeded { seed: 43 }).unwrap();
        let mut orders = HashSet::new();
        for epoch in 0..10 {
            let o = b.order(epoch);
            assert_eq!(o, again.order(epoch), "same seed, same epoch");
            assert_ne!(o, other.order(epoch), "other seed");
            assert_ne!(o, (0..len).collect::<Vec<_>>(), "actually shuffled");
            assert_eq!(b.epoch(epoch).order(), &o[..]);
            assert_eq!(b.epoch(epoch).flatten().collect::<Vec<_>>(), o);
            orders.insert(o);
        }
        assert_eq!(orders.len(), 10, "every epoch a different order");
    }

    #[test]
    fn dataset_batches_match_their_indices() {
        let d = numbered(23);
        let batches: Vec<Batch> = d
            .batches(5, Shuffle::Seeded { seed: 3 }, 1)
            .unwrap()
            .collect();
        assert_eq!(batches.len(), 5);
        assert_eq!(batches[4].len(), 3);
        let order = Batcher::new(23, 5, Shuffle::Seeded { seed: 3 })
            .unwrap()
            .order(1);
        assert_eq!(
            batches
                .iter()
                .flat_map(|b| b.indices.clone())
                .collect::<Vec<_>>(),
            order
        );
        for b in &batches {
            assert_eq!(b.images.shape(), &[b.len(), 2, 3, 1]);
            for (row, &i) in b.indices.iter().enumerate() {
                assert_eq!(index_of(b.images.slice(s![row, .., .., ..])), i);
                assert_eq!(b.labels[row], (i % 10) as u8);
            }
        }
    }

    #[test]
    fn splitmix64_known_values() {
        // First outputs of the reference splitmix64 generator seeded with 0 (Vigna's
        // splitmix64.c): next() adds the gamma, then mixes, so splitmix64(k · gamma) is output k+1.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }
}
