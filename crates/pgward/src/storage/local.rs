//! [`Storage`] on a local directory, with the repository's own habits:
//! files and directories private, links never followed, a new object
//! written to `tmp/` and synced, then renamed into place without replacing
//! anything, then its directory synced.

use super::{Object, Opened, Storage, Upload, invalid_key, valid_key};
use crate::repository::{create_private, open_regular, open_trusted, rename_no_replace};
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where uploads in progress are written, below the root (the
/// repository's own `tmp/`).
const STAGING_DIR: &str = "tmp";

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: &Path) -> LocalStorage {
        LocalStorage {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        if !valid_key(key) {
            return Err(invalid_key(key));
        }
        Ok(self.root.join(key))
    }

    /// A fresh private file in `tmp/` for an object on its way to `key`.
    fn staging(&self, key: &str) -> io::Result<(PathBuf, File)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join(STAGING_DIR);
        make_private_dirs(&dir)?;
        remove_dead_uploads(&dir);
        let leaf = key.rsplit('/').next().unwrap_or(key);
        let path = dir.join(format!(
            "upload-{}-{}-{leaf}.part",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = create_private(&path)?;
        Ok((path, file))
    }

    /// Syncs `staged` and renames it to `key`, never replacing a file.
    fn commit(&self, staged: &Path, file: &File, key: &str, replace: bool) -> io::Result<()> {
        let target = self.path(key)?;
        let parent = target.parent().expect("keys have a parent: the root");
        make_private_dirs(parent)?;
        file.sync_all()?;
        let renamed = if replace {
            fs::rename(staged, &target)
        } else {
            rename_no_replace(staged, &target)
        };
        if let Err(e) = renamed {
            let _ = fs::remove_file(staged);
            return Err(e);
        }
        File::open(parent)?.sync_all()
    }
}

/// Removes the staging files of uploads whose process is gone (killed
/// mid-copy): they are no object, and may be large.
fn remove_dead_uploads(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("upload-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        if let Some(pid) = pid
            && name.ends_with(".part")
            && !crate::repository::process_alive(pid)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn make_private_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        match fs::symlink_metadata(self.path(key)?) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_whole(&self, key: &str, limit: u64) -> io::Result<Vec<u8>> {
        let file = open_regular(&self.path(key)?)?;
        if file.metadata()?.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {limit} bytes"),
            ));
        }
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn open_versioned(&self, key: &str) -> io::Result<Opened> {
        let file = open_trusted(&self.path(key)?)?;
        Ok(Opened {
            bytes: file.metadata()?.len(),
            stream: Box::new(file),
            version: None,
        })
    }

    fn list(&self, dir: &str) -> io::Result<Vec<Object>> {
        let entries = match fs::read_dir(self.path(dir)?) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut objects = Vec::new();
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                continue;
            }
            objects.push(Object {
                name: entry.file_name().to_string_lossy().into_owned(),
                bytes: meta.len(),
            });
        }
        Ok(objects)
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let (staged, mut file) = self.staging(key)?;
        if let Err(e) = file.write_all(bytes) {
            let _ = fs::remove_file(&staged);
            return Err(e);
        }
        self.commit(&staged, &file, key, false)
    }

    fn put_replacing(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let (staged, mut file) = self.staging(key)?;
        if let Err(e) = file.write_all(bytes) {
            let _ = fs::remove_file(&staged);
            return Err(e);
        }
        self.commit(&staged, &file, key, true)
    }

    fn upload(&self, key: &str, _expected: Option<u64>) -> io::Result<Box<dyn Upload>> {
        self.path(key)?;
        let (staged, file) = self.staging(key)?;
        Ok(Box::new(LocalUpload {
            storage: self.clone(),
            key: key.to_string(),
            staged,
            file: Some(file),
        }))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

struct LocalUpload {
    storage: LocalStorage,
    key: String,
    staged: PathBuf,
    /// `None` once finished or aborted.
    file: Option<File>,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Err(io::Error::other("the upload is over")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for LocalUpload {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let file = self.file.take().expect("an upload finishes once");
        self.storage
            .commit(&self.staged, &file, &self.key, false)
            .inspect_err(|_| {
                let _ = fs::remove_file(&self.staged);
            })
    }

    fn abort(mut self: Box<Self>) -> io::Result<()> {
        self.file = None;
        match fs::remove_file(&self.staged) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.staged);
        }
    }
}
