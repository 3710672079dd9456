//! Build script: makes the wheel's linker wrapper executable (a source distribution stores every file
//! without its execute bit, and pyproject.toml names `.ci/zig-cc` as the extension module's linker).

fn main() {
    println!("cargo:rerun-if-changed=.ci/zig-cc");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/zig-cc");
        if let Ok(meta) = std::fs::metadata(&path) {
            let mut perm = meta.permissions();
            if perm.mode() & 0o111 != 0o111 {
                perm.set_mode(perm.mode() | 0o755);
                // A read-only tree keeps its mode; the link then says so.
                let _ = std::fs::set_permissions(&path, perm);
            }
        }
    }
}
