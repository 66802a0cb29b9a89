//! The `fs` backend: a directory with one subdirectory per container and one file per object,
//! both named by their encoded names ([`super::names`]), so no name can reach outside the
//! directory.
//!
//! A write goes to a temporary file in the container's directory (`.tmp-…`, a name no encoded
//! name can have), is flushed to disk, and is renamed over the object when the guest finishes:
//! a crash or an abandoned write never leaves a half-written object visible, and of two writers
//! the one that renames last wins. A write that is abandoned or given up on removes its
//! temporary file; files a crash left behind are removed when the store opens, once they are
//! [`STALE_TEMP`] old (younger ones may belong to a write still running: another replica on
//! shared storage, or the previous generation during a reload).

use super::backend::{
    Backend, BlobError, ByteRange, ByteStream, ContainerInfo, Listing, ObjectInfo, Read,
};
use super::names::{self, Escape};
use super::unix_seconds;
use async_trait::async_trait;
use futures::StreamExt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The longest file name the directory's file system takes.
const MAX_FILE_NAME: usize = 255;

/// Prefix of temporary files; encoded names never start with `.`.
const TEMP_PREFIX: &str = ".tmp-";

/// How old a temporary file must be before opening the store removes it.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bytes one read from a file yields at most.
const READ_CHUNK: usize = 64 << 10;

pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// Opens (creating it if needed) the store's directory and removes temporary files a crash
    /// left behind.
    pub fn open(root: &Path) -> anyhow::Result<FsBackend> {
        use anyhow::Context;
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create the directory {}", root.display()))?;
        for container in std::fs::read_dir(root)
            .with_context(|| format!("cannot read the directory {}", root.display()))?
            .flatten()
        {
            let Ok(files) = std::fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                let stale = file
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .is_ok_and(|modified| modified.elapsed().unwrap_or_default() > STALE_TEMP);
                if stale && file.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        Ok(FsBackend {
            root: root.to_path_buf(),
        })
    }

    /// The file name of a container or object name.
    fn file_name(what: &str, name: &str) -> Result<String, BlobError> {
        let encoded = names::encode(name, Escape::Percent);
        if encoded.len() > MAX_FILE_NAME {
            return Err(BlobError::Invalid(format!(
                "the {what} name is too long for an fs store: encoded for the file system it \
                 takes {} bytes, more than {MAX_FILE_NAME} (bytes other than ASCII letters, \
                 digits, `-` and `_` take three)",
                encoded.len()
            )));
        }
        Ok(encoded)
    }

    fn container_dir(&self, container: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join(Self::file_name("container", container)?))
    }

    /// The container's directory, which must exist.
    async fn existing_container(&self, container: &str) -> Result<PathBuf, BlobError> {
        let dir = self.container_dir(container)?;
        match tokio::fs::metadata(&dir).await {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => Err(missing(container)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(container)),
            Err(e) => Err(io_error("cannot read the container", e)),
        }
    }

    fn object_path(dir: &Path, name: &str) -> Result<PathBuf, BlobError> {
        Ok(dir.join(Self::file_name("object", name)?))
    }

    /// The object names in a container's directory, sorted.
    async fn names(dir: &Path) -> Result<Vec<String>, BlobError> {
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| io_error("cannot list the container", e))?;
        let mut names = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error("cannot list the container", e))?
        {
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|file| names::decode(file, Escape::Percent))
            {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

/// A write's temporary file, removed unless it was renamed into place: also when the write is
/// given up on (the store drops a write whose backend stalls).
struct TempFile(PathBuf);

impl TempFile {
    fn renamed(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn missing(container: &str) -> BlobError {
    BlobError::NotFound(format!("container `{container}`"))
}

fn missing_object(name: &str) -> BlobError {
    BlobError::NotFound(format!("object `{name}`"))
}

fn io_error(what: &str, error: std::io::Error) -> BlobError {
    BlobError::unavailable(what, error)
}

fn created_at(meta: &std::fs::Metadata) -> u64 {
    meta.created()
        .or_else(|_| meta.modified())
        .map(unix_seconds)
        .unwrap_or(0)
}

#[async_trait]
impl Backend for FsBackend {
    fn kind(&self) -> &'static str {
        "fs"
    }

    async fn container_count(&self) -> Result<u64, BlobError> {
        let mut entries = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| io_error("cannot read the store's directory", e))?;
        let mut count = 0;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error("cannot read the store's directory", e))?
        {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| names::decode(n, Escape::Percent).is_some())
            {
                count += 1;
            }
        }
        Ok(count)
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        let dir = self.container_dir(container)?;
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Err(BlobError::AlreadyExists(format!("container `{container}`")))
            }
            Err(e) => Err(io_error("cannot create the container", e)),
        }
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        let dir = self.container_dir(container)?;
        match tokio::fs::metadata(&dir).await {
            Ok(meta) if meta.is_dir() => Ok(ContainerInfo {
                created_at: created_at(&meta),
            }),
            Ok(_) => Err(missing(container)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(container)),
            Err(e) => Err(io_error("cannot read the container", e)),
        }
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        let dir = self.container_dir(container)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(container)),
            Err(e) => Err(io_error("cannot delete the container", e)),
        }
    }

    async fn list_objects(
        &self,
        container: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, BlobError> {
        let dir = self.existing_container(container).await?;
        let all = Self::names(&dir).await?;
        Ok(Listing::page_of(&all, cursor, limit))
    }

    async fn object_info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        let dir = self.existing_container(container).await?;
        let path = Self::object_path(&dir, name)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(ObjectInfo {
                size: meta.len(),
                created_at: meta.modified().map(unix_seconds).unwrap_or(0),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(missing_object(name)),
            Err(e) => Err(io_error("cannot read the object", e)),
        }
    }

    async fn read(&self, container: &str, name: &str, range: ByteRange) -> Result<Read, BlobError> {
        let dir = self.existing_container(container).await?;
        let path = Self::object_path(&dir, name)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing_object(name)),
            Err(e) => return Err(io_error("cannot open the object", e)),
        };
        // The open file is the object as it was when opened: a rename over it later does not
        // change what this read sees.
        let len = file
            .metadata()
            .await
            .map_err(|e| io_error("cannot read the object", e))?
            .len();
        let range = range.clamp(len);
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| io_error("cannot read the object", e))?;
        let size = range.end - range.start;
        let body = tokio_util::io::ReaderStream::with_capacity(file.take(size), READ_CHUNK)
            .map(|chunk| chunk.map_err(|e| io_error("cannot read the object", e)))
            .boxed();
        Ok(Read { size, body })
    }

    async fn write(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
    ) -> Result<u64, BlobError> {
        let dir = self.existing_container(container).await?;
        let path = Self::object_path(&dir, name)?;
        let temp = TempFile(dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple())));
        let mut file = tokio::fs::File::create_new(&temp.0)
            .await
            .map_err(|e| io_error("cannot create the object", e))?;
        let written = async {
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io_error("cannot write the object", e))?;
                size += chunk.len() as u64;
            }
            file.sync_all()
                .await
                .map_err(|e| io_error("cannot write the object", e))?;
            Ok(size)
        }
        .await;
        drop(file);
        let size = written?;
        tokio::fs::rename(&temp.0, &path)
            .await
            .map_err(|e| io_error("cannot write the object", e))?;
        temp.renamed();
        Ok(size)
    }

    async fn delete_object(&self, container: &str, name: &str) -> Result<(), BlobError> {
        let dir = self.existing_container(container).await?;
        let path = Self::object_path(&dir, name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot delete the object", e)),
        }
    }
}
