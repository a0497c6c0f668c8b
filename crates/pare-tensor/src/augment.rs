//! Seeded data augmentation of NHWC training batches: random crop with zero padding
//! (torchvision's `RandomCrop(size, padding)`, Keras' `ZeroPadding2D` + `RandomCrop`) and
//! random horizontal flip (Keras' `RandomFlip("horizontal")`).
//!
//! Each example's shift and flip come from a hash of the run's seed, the epoch and the
//! example's index in the training data, not from a shared generator: the same seed gives the
//! same augmented batches whatever the batch is split into.

use crate::error::{Result, TensorError};
use ndarray::{ArrayD, Axis};

/// Which random changes to make to each training image; `Default` makes none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augmentation {
    /// Pad each image by this many zero pixels on every side, then crop a window of the
    /// original size at a random offset (0: no crop).
    pub pad_crop: usize,
    /// Mirror each image left–right with probability ½.
    pub horizontal_flip: bool,
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Augmentation {
    /// True when it changes nothing.
    pub fn is_none(&self) -> bool {
        self.pad_crop == 0 && !self.horizontal_flip
    }

    /// Checks the settings (any padding and flip are valid; kept for symmetry with the other
    /// settings, so a later option has a place to be checked).
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The (row shift, column shift, flip) of the example at `index` in `epoch`; shifts in
    /// `0..=2·pad_crop`, where `pad_crop` is no shift.
    pub fn draw(&self, seed: u64, epoch: usize, index: usize) -> (usize, usize, bool) {
        let h = mix(seed ^ mix((epoch as u64) << 32 ^ index as u64));
        let span = 2 * self.pad_crop as u64 + 1;
        let dy = (h % span) as usize;
        let dx = ((h >> 21) % span) as usize;
        let flip = self.horizontal_flip && (h >> 63) == 1;
        (dy, dx, flip)
    }

    /// Augments the batch `x` (`[n, h, w, c]`) in place; `indices` are its examples' positions
    /// in the training data.
    ///
    /// # Errors
    /// [`TensorError::BadHyperParameter`] when augmenting anything but NHWC images.
    pub fn apply(
        &self,
        x: &mut ArrayD<f32>,
        indices: &[usize],
        seed: u64,
        epoch: usize,
    ) -> Result<()> {
        if self.is_none() {
            return Ok(());
        }
        let &[n, h, w, c] = x.shape() else {
            return Err(TensorError::BadHyperParameter {
                name: "augmentation",
                value: format!("{self:?}"),
                reason: "needs images [batch, height, width, channels]",
            });
        };
        debug_assert_eq!(n, indices.len(), "augment: one index per example");
        let p = self.pad_crop as isize;
        let mut out = vec![0f32; h * w * c];
        for (mut img, &index) in x.axis_iter_mut(Axis(0)).zip(indices) {
            let (dy, dx, flip) = self.draw(seed, epoch, index);
            let src = img
                .as_slice()
                .expect("gather makes standard-layout batches");
            out.fill(0.0);
            for r in 0..h {
                let sr = r as isize + dy as isize - p;
                if sr < 0 || sr >= h as isize {
                    continue;
                }
                for col in 0..w {
                    let sc = col as isize + dx as isize - p;
                    if sc < 0 || sc >= w as isize {
                        continue;
                    }
                    let dst_col = if flip { w - 1 - col } else { col };
                    let s = (sr as usize * w + sc as usize) * c;
                    let d = (r * w + dst_col) * c;
                    out[d..d + c].copy_from_slice(&src[s..s + c]);
                }
            }
            img.as_slice_mut()
                .expect("gather makes standard-layout batches")
                .copy_from_slice(&out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn ramp(n: usize, h: usize, w: usize) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(&[n, h, w, 1]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f32
        })
    }

    #[test]
    fn crop_shifts_by_the_drawn_offset_with_zero_fill() {
        let aug = Augmentation {
            pad_crop: 2,
            horizontal_flip: false,
        };
        let idx: Vec<usize> = (0..16).collect();
        let mut x = ramp(16, 5, 5);
        let orig = x.clone();
        aug.apply(&mut x, &idx, 7, 0).unwrap();
        let mut shifted = 0;
        for (i, &index) in idx.iter().enumerate() {
            let (dy, dx, flip) = aug.draw(7, 0, index);
            assert!(!flip && dy <= 4 && dx <= 4);
            shifted += usize::from(dy != 2 || dx != 2);
            for r in 0..5 {
                for c in 0..5 {
                    let (sr, sc) = (r as isize + dy as isize - 2, c as isize + dx as isize - 2);
                    let want = if (0..5).contains(&sr) && (0..5).contains(&sc) {
                        orig[[i, sr as usize, sc as usize, 0]]
                    } else {
                        0.0
                    };
                    assert_eq!(x[[i, r, c, 0]], want);
                }
            }
        }
        assert!(shifted > 8, "offsets are spread: {shifted} of 16 moved");
    }

    #[test]
    fn flip_mirrors_about_half_the_images_and_is_reproducible() {
        let aug = Augmentation {
            pad_crop: 0,
            horizontal_flip: true,
        };
        let idx: Vec<usize> = (0..200).collect();
        let mut x = ramp(200, 3, 4);
        let orig = x.clone();
        aug.apply(&mut x, &idx, 1, 3).unwrap();
        let mut flipped = 0;
        for i in 0..200 {
            let f = aug.draw(1, 3, i).2;
            flipped += usize::from(f);
            for c in 0..4 {
                let src = if f { 3 - c } else { c };
                assert_eq!(x[[i, 1, c, 0]], orig[[i, 1, src, 0]]);
            }
        }
        assert!((70..130).contains(&flipped), "{flipped} of 200");
        // Same seed, epoch and indices: the same batch, however it is split.
        let mut a = orig.clone();
        aug.apply(&mut a, &idx, 1, 3).unwrap();
        assert_eq!(a, x);
        let mut b = orig.slice_axis(Axis(0), (100..).into()).to_owned();
        aug.apply(&mut b, &idx[100..], 1, 3).unwrap();
        assert_eq!(b, x.slice_axis(Axis(0), (100..).into()));
        // Another epoch draws again.
        let mut e = orig.clone();
        aug.apply(&mut e, &idx, 1, 4).unwrap();
        assert_ne!(e, x);
        // Nothing to do leaves the batch alone, and only images can be augmented.
        let mut same = orig.clone();
        Augmentation::default()
            .apply(&mut same, &idx, 1, 3)
            .unwrap();
        assert_eq!(same, orig);
        let mut flat = ArrayD::zeros(IxDyn(&[2, 12]));
        assert!(aug.apply(&mut flat, &[0, 1], 0, 0).is_err());
    }
}
