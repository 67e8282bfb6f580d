//! The IDX format of MNIST and Fashion-MNIST (gzipped or raw): `00 00 <type> <ndims>`, then `ndims` big-endian
//! u32 sizes, then the values. Images are `u8` of dims `[n, rows, cols]`, labels `u8` of dims `[n]`.
//!
//! Hand-written rather than a crate: the format is a 4-byte header and a product of sizes, and the maintained IDX
//! crates neither read gzip nor name what is wrong with a bad file, which is most of the work here.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::Path;

/// The value type `0x08` (unsigned byte): the only one MNIST-style data sets use.
const UBYTE: u8 = 0x08;
/// Largest file accepted once decompressed (the Fashion-MNIST training images are 47 MB).
const MAX_BYTES: u64 = 1 << 32;

/// An IDX array of bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions of the array.
    pub dims: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<u8>,
}

/// Read an IDX file of unsigned bytes; gzip is detected by its magic number.
pub fn read(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read IDX file {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        // Every member, as gunzip reads a file written in several (a single-member decoder stops after the first).
        let mut decoder = flate2::read::MultiGzDecoder::new(raw.as_slice()).take(MAX_BYTES);
        let mut out = Vec::new();
        // The header first: its sizes say how much the body needs, which is reserved fallibly, so a small gzip
        // that inflates beyond the memory there is is refused by name instead of aborting the allocator.
        let mut head = [0u8; 4];
        let got =
            read_up_to(&mut decoder, &mut head).with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out.extend_from_slice(&head[..got]);
        if got == 4 {
            let mut sizes = vec![0u8; 4 * head[3] as usize];
            let got = read_up_to(&mut decoder, &mut sizes)
                .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
            out.extend_from_slice(&sizes[..got]);
            let count = sizes[..got]
                .chunks_exact(4)
                .try_fold(1u64, |a, c| a.checked_mul(u32::from_be_bytes(c.try_into().expect("4 bytes")) as u64));
            if let Some(count) = count.filter(|&c| c <= MAX_BYTES) {
                reserve(&mut out, count as usize, path)?;
            }
        }
        decoder.read_to_end(&mut out).with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    parse_owned(bytes).with_context(|| format!("{}: not a valid IDX file", path.display()))
}

/// Reserve `extra` bytes or fail naming the file: an allocation that cannot be had is an error, not an abort.
fn reserve(v: &mut Vec<u8>, extra: usize, path: &Path) -> Result<()> {
    v.try_reserve_exact(extra).map_err(|_| {
        anyhow::anyhow!(
            "{}: its {:.2} GB of values cannot be held in memory here; use a smaller file, or fewer images (data.limit \
             still reads the whole file)",
            path.display(),
            extra as f64 / 1e9
        )
    })
}

/// Fill `buf` as far as the stream goes; the count read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            k => filled += k,
        }
    }
    Ok(filled)
}

/// [`parse`] without copying the body.
fn parse_owned(mut bytes: Vec<u8>) -> Result<IdxArray> {
    let dims = parse_header(&bytes)?;
    let header = 4 + 4 * dims.len();
    bytes.drain(..header);
    Ok(IdxArray { dims, values: bytes })
}

/// Parse the bytes of an IDX file.
pub fn parse(bytes: &[u8]) -> Result<IdxArray> {
    let dims = parse_header(bytes)?;
    Ok(IdxArray { values: bytes[4 + 4 * dims.len()..].to_vec(), dims })
}

/// The dims of an IDX file, checked against the length of its body.
fn parse_header(bytes: &[u8]) -> Result<Vec<usize>> {
    let Some(&[z0, z1, kind, ndims]) = bytes.get(..4).map(|h| <&[u8; 4]>::try_from(h).expect("4 bytes")) else {
        bail!("{} bytes: shorter than the 4-byte header", bytes.len());
    };
    if (z0, z1) != (0, 0) {
        bail!("wrong magic number: expected the bytes 00 00, got {z0:02x} {z1:02x} (is this an IDX file?)");
    }
    if kind != UBYTE {
        bail!("value type 0x{kind:02x}: expected 0x08 (unsigned bytes)");
    }
    let n_dims = ndims as usize;
    let header = 4 + 4 * n_dims;
    let sizes = bytes.get(4..header).ok_or_else(|| anyhow::anyhow!("truncated: the header lists {n_dims} sizes"))?;
    let dims: Vec<usize> =
        sizes.chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize).collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&c| c as u64 <= MAX_BYTES);
    let Some(count) = count else { bail!("dims {dims:?}: more than {MAX_BYTES} values") };
    let body = &bytes[header..];
    if body.len() != count {
        bail!(
            "{}: dims {dims:?} need {count} values, the file holds {}",
            if body.len() < count { "truncated" } else { "trailing data" },
            body.len()
        );
    }
    Ok(dims)
}

/// Images `[n, rows, cols]` and, when given, their labels `[n]`, checked against each other.
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Pixels, image by image, row-major.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Option<Vec<u8>>,
}

/// Read an IDX image file and, optionally, its labels, checking that they belong together.
pub fn read_images(images: &Path, labels: Option<&Path>) -> Result<IdxImages> {
    let img = read(images)?;
    let [count, rows, cols] = img.dims[..] else {
        bail!("{}: expected image dims [n, rows, cols], got {:?}", images.display(), img.dims);
    };
    if count == 0 || rows == 0 || cols == 0 {
        bail!("{}: empty images (dims {:?})", images.display(), img.dims);
    }
    let labels = match labels {
        None => None,
        Some(path) => {
            let lab = read(path)?;
            let [n] = lab.dims[..] else {
                bail!("{}: expected label dims [n], got {:?}", path.display(), lab.dims);
            };
            if n != count {
                bail!("{}: {n} labels for the {count} images of {}", path.display(), images.display());
            }
            Some(lab.values)
        }
    };
    Ok(IdxImages { count, rows, cols, pixels: img.values, labels })
}

/// The bytes of an IDX file of unsigned bytes with `dims` (tests and tools write small data sets with it).
pub fn encode(dims: &[usize], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, UBYTE, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_raw_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let bytes = encode(&[2, 3, 4], &values);
        let raw = dir.path().join("x-idx3-ubyte");
        std::fs::write(&raw, &bytes).unwrap();
        let gz = dir.path().join("x-idx3-ubyte.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        // Written as two gzip members (as `cat a.gz b.gz` makes): gunzip reads both, and so must tilt.
        let two = dir.path().join("two-idx3-ubyte.gz");
        let mut joined = Vec::new();
        for part in [&bytes[..10], &bytes[10..]] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut enc, part).unwrap();
            joined.extend(enc.finish().unwrap());
        }
        std::fs::write(&two, joined).unwrap();
        for p in [&raw, &gz, &two] {
            assert_eq!(read(p).unwrap(), IdxArray { dims: vec![2, 3, 4], values: values.clone() });
        }
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let err = |p: &Path| format!("{:#}", read(p).unwrap_err());
        let good = encode(&[2, 2, 2], &[1; 8]);
        let e = err(&write("short", &good[..10]));
        assert!(e.contains("short: not a valid IDX file") && e.contains("truncated"), "{e}");
        let e = err(&write("body", &good[..good.len() - 1]));
        assert!(e.contains("truncated: dims [2, 2, 2] need 8 values, the file holds 7"), "{e}");
        let mut magic = good.clone();
        magic[0] = 0x50;
        assert!(err(&write("magic", &magic)).contains("wrong magic number"));
        let mut kind = good.clone();
        kind[2] = 0x0d;
        assert!(err(&write("float", &kind)).contains("value type 0x0d"));
        let e = err(&write("gz", &[0x1f, 0x8b, 1, 2, 3]));
        assert!(e.contains("gz: corrupt gzip data"), "{e}");
        assert!(err(&dir.path().join("missing")).contains("cannot read IDX file"));

        let images = write("img", &good);
        let labels = write("lab", &encode(&[3], &[0, 1, 2]));
        let e = format!("{:#}", read_images(&images, Some(&labels)).err().unwrap());
        assert!(e.contains("lab: 3 labels for the 2 images"), "{e}");
        let e = format!("{:#}", read_images(&labels, None).err().unwrap());
        assert!(e.contains("expected image dims [n, rows, cols], got [3]"), "{e}");
        let e = format!("{:#}", read_images(&images, Some(&images)).err().unwrap());
        assert!(e.contains("expected label dims [n], got [2, 2, 2]"), "{e}");
    }

    /// The real Fashion-MNIST test split, when Debian's `dataset-fashion-mnist` is installed.
    #[test]
    fn fashion_mnist_test_split_when_installed() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        let (images, labels) = (dir.join("t10k-images-idx3-ubyte.gz"), dir.join("t10k-labels-idx1-ubyte.gz"));
        if !images.exists() {
            eprintln!("skipped: {} is not installed", images.display());
            return;
        }
        let set = read_images(&images, Some(&labels)).unwrap();
        assert_eq!((set.count, set.rows, set.cols), (10_000, 28, 28));
        let labels = set.labels.unwrap();
        for c in 0..10u8 {
            assert_eq!(labels.iter().filter(|&&l| l == c).count(), 1000, "class {c}");
        }
    }
}
