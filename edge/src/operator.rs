//! What `edge serve` checks and keeps for an operator before the node starts:
//! the dev-mode secret kept in the data dir (so `edge token --data-dir` mints
//! tokens a dev server accepts), the data dir's lock (one node per data dir),
//! and a probe of the listen address (SO_REUSEPORT would let a second node
//! bind the same port silently, splitting clients between two servers),
//! and the process's transparent huge pages.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The dev-mode secret's file in the data dir.
pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";
/// The data dir's lock file, held by the running node.
pub const LOCK_FILE: &str = "edge.lock";

/// The dev-mode secret of `data_dir`: the one kept there, or a new one written there (mode
/// 0600). Returns it and whether it was created now.
pub fn dev_secret(data_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = data_dir.join(DEV_SECRET_FILE);
    if let Some(s) = read_dev_secret(data_dir)? {
        return Ok((s, false));
    }
    std::fs::create_dir_all(data_dir)?;
    let secret = crate::auth::generate_dev_secret();
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok((secret, true))
}

/// The dev-mode secret kept in `data_dir`, if any.
pub fn read_dev_secret(data_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join(DEV_SECRET_FILE)) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The data dir's lock, held until dropped (the process exits).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes `data_dir`'s lock (an exclusive `flock` on its lock file, which holds the pid);
/// the error names the pid holding it when another node runs there.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    let path = data_dir.join(LOCK_FILE);
    std::fs::create_dir_all(data_dir).map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor this process owns; no memory is touched.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(format!(
            "data dir {} is in use by another edge (pid {}); give each node its own --data-dir",
            data_dir.display(),
            holder.trim()
        ));
    }
    file.set_len(0).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = write!(file, "{}", std::process::id());
    Ok(DataDirLock { _file: file, path })
}

/// How long a listener must keep accepting before `probe_listen` refuses: a node that
/// just exited may hold its listener a few hundred ms while its io_uring is torn down, and
/// a restart right after it must not be refused.
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

/// Asks the kernel not to back this process's memory with transparent huge pages (from now
/// on, and khugepaged leaves its existing ranges alone): see `Config::transparent_huge_pages`.
/// The flag is the process's (`THP_enabled: 0` in `/proc/<pid>/status`) and its children's.
pub fn disable_transparent_huge_pages() -> Result<(), String> {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and three zero arguments; it changes
    // only this process's memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("prctl(PR_SET_THP_DISABLE): {}", std::io::Error::last_os_error()))
    }
}

/// Whether something keeps accepting connections on `listen` for [`PROBE_PATIENCE`] (a port
/// of 0 never does). The error says who to stop.
pub fn probe_listen(listen: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + PROBE_PATIENCE;
    loop {
        match accepting(listen)? {
            None => return Ok(()),
            Some(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Some(probe) => {
                return Err(format!(
                    "--listen {listen}: another server already accepts connections on {probe}; stop it or choose another port"
                ))
            }
        }
    }
}

/// The address of `listen` something accepts a connection on now, if any.
fn accepting(listen: &str) -> Result<Option<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen}: {e}"))?
        .filter(|a| a.port() != 0)
        .collect();
    for addr in addrs {
        let probe = if addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            addr
        };
        if TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
            return Ok(Some(probe));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test.
    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edge-operator-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn the_dev_secret_is_kept_and_read_back() {
        let dir = temp("secret");
        assert_eq!(read_dev_secret(&dir).expect("read"), None);
        let (s, created) = dev_secret(&dir).expect("create");
        assert!(created && s.len() >= 32);
        assert_eq!(dev_secret(&dir).expect("again"), (s.clone(), false), "kept across restarts");
        assert_eq!(read_dev_secret(&dir).expect("read"), Some(s));
        let mode = std::fs::metadata(dir.join(DEV_SECRET_FILE)).expect("meta");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    #[test]
    fn one_node_per_data_dir_and_per_listen_address() {
        let dir = temp("lock");
        let held = lock_data_dir(&dir).expect("first");
        let err = lock_data_dir(&dir).expect_err("second");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        lock_data_dir(&dir).expect("free again once dropped");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        assert!(probe_listen(&addr).expect_err("taken").contains("another server"));
        drop(l);
        probe_listen(&addr).expect("free");
        probe_listen("127.0.0.1:0").expect("port 0 is always free");
    }
}
