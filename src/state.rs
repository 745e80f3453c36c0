//! The state directory: the only place the agent keeps anything across
//! restarts, and the one implementation of "write a file so that a power cut
//! leaves either the old or the new version, never half of one".
//!
//! Files are 0600 and the directory 0700 because they hold the agent id,
//! task results and collector configs, which may carry credentials.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// Creates `dir` (and parents) if needed and makes it 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    let meta = fs::metadata(dir).map_err(|e| Error::io("inspect directory", dir, e))?;
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("set mode 0700 on", dir, e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync,
/// rename, fsync of the directory. The file is 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes).map(drop)
}

/// [`write_atomic`], handing back the new file open for appending. A journal
/// rewritten this way appends through the very file now at `path`: opened
/// again after the rename, a failed open would leave it appending to the
/// file it replaced, unlinked, and every later record would be lost.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
        sync_dir(dir)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// The bytes a JSON state file holds.
pub fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Internal {
        what: "encode state",
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &encode_json(value)?)
}

/// Reads a JSON state file. A missing file is `Ok(None)`; a file that cannot
/// be read or decoded is `Err(CorruptState)`, for the caller to set aside.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::CorruptState {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::CorruptState {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Moves an unusable state file to `<name>.corrupt` so the agent can start
/// clean while an operator can still look at what was there.
pub fn set_aside(path: &Path) -> PathBuf {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    if let Err(e) = fs::rename(path, &aside) {
        log::warn!("cannot move {} aside: {e}; removing it", path.display());
        let _ = fs::remove_file(path);
    }
    aside
}

/// Loads a state file, falling back to `None` (a clean start) with a log
/// line when it is corrupt: a bad file must never become a crash loop.
pub fn load_or_reset<T: DeserializeOwned>(path: &Path) -> Option<T> {
    match read_json(path) {
        Ok(value) => value,
        Err(e) => {
            let aside = set_aside(path);
            log::warn!("{e}; moved to {} and starting clean", aside.display());
            None
        }
    }
}

/// What the agent remembers about who it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    /// Given by the manager at registration.
    pub agent_id: Option<String>,
}

#[derive(Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the state directory with mode 0700.
    pub fn open(root: &Path) -> Result<StateDir> {
        ensure_private_dir(root)?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn load_identity(&self) -> Identity {
        let identity: Option<Identity> = load_or_reset(&self.path("identity.json"));
        let identity = identity.unwrap_or_default();
        if let Some(id) = &identity.agent_id
            && !crate::ids::is_valid_id(id)
        {
            log::warn!(
                "identity.json holds an invalid agent_id {:?}; registering afresh",
                crate::ids::escape_for_log(id)
            );
            return Identity::default();
        }
        identity
    }

    pub fn save_identity(&self, identity: &Identity) -> Result<()> {
        write_json(&self.path("identity.json"), identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("outpost-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = temp_dir("atomic");
        let state = StateDir::open(&dir.join("s")).unwrap();
        assert_eq!(fs::metadata(state.root()).unwrap().mode() & 0o777, 0o700);
        let file = state.path("x.json");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(state.root()).unwrap().count(),
            1,
            "no temp file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_identity_is_set_aside() {
        let dir = temp_dir("corrupt");
        let state = StateDir::open(&dir).unwrap();
        fs::write(state.path("identity.json"), b"{\"agent_id\": 12").unwrap();
        assert_eq!(state.load_identity(), Identity::default());
        assert!(state.path("identity.json.corrupt").exists());
        state
            .save_identity(&Identity {
                agent_id: Some("a-1".into()),
            })
            .unwrap();
        assert_eq!(state.load_identity().agent_id.as_deref(), Some("a-1"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
