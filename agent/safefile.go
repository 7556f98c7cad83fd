package agent

// Where the agent writes, and how.
//
// The agent runs as root, and so do the apps and probes it starts. Every
// directory it writes into — data_dir (state, floor, downloads, control
// socket) and each app's directory (the staged binary, <name>.prev, the
// rollback link) — must be changeable by nobody but root and the agent's
// own user, like the files sshd's StrictModes accepts: otherwise the
// directory's owner can plant a symbolic or hard link at a name the agent
// is about to write and make root overwrite any file, or move the state
// files aside and replay an older release.
//
// So, before the agent creates anything in such a directory (at Open for
// data_dir, before every install and rollback for an app's directory, and
// logged at daemon start), checkDir walks the path from / the way the
// kernel resolves it, symbolic links included, and refuses, changing
// nothing, when a component is owned by another user or is writable by
// its group or everyone (an ancestor may be world-writable with the
// sticky bit, like /tmp; the directory itself may not). Once every
// component can only be changed by root or the agent's user, no other user
// can swap a directory or a link under the agent between the check and the
// write.
//
// And every file the agent creates is created with O_CREAT|O_EXCL|
// O_NOFOLLOW (createFile, openPartFile): a leftover regular file from an
// interrupted run is removed first; anything else at the name (a symbolic
// link, a device, a directory) is refused and left alone. Temporary files
// from os.CreateTemp (the check run's file, floor.json's and state's
// temporary files) are O_EXCL already; link(2), rename(2) and unlink(2)
// never follow a link at their last component.

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// maxLinks bounds the symbolic links followed while checking a path (the
// kernel's own limit).
const maxLinks = 40

// dirFault is what is wrong with one path component.
type dirFault struct {
	path     string // the component (a directory, or a link in a sticky directory)
	owner    uint32 // its owner
	mode     fs.FileMode
	wrongUID bool // owned by another user
	link     bool // a symbolic link owned by another user in a sticky directory
}

// walkDir checks every component of the absolute path dir (resolving
// symbolic links as the kernel does). It returns the first fault, or
// missing: the first component that does not exist (its parent passed);
// or an error when a component cannot be read or is not a directory.
func walkDir(dir string) (fault *dirFault, missing string, err error) {
	euid := uint32(os.Geteuid())
	trusted := func(uid uint32) bool { return uid == 0 || uid == euid }
	fi, err := os.Lstat("/")
	if err != nil {
		return nil, "", err
	}
	judge := func(p string, fi fs.FileInfo, final bool) *dirFault {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if !trusted(st.Uid) {
			return &dirFault{path: p, owner: st.Uid, mode: fi.Mode(), wrongUID: true}
		}
		sticky := fi.Mode()&fs.ModeSticky != 0
		if fi.Mode().Perm()&0o022 != 0 && (final || !sticky) {
			return &dirFault{path: p, owner: st.Uid, mode: fi.Mode()}
		}
		return nil
	}
	todo := components(dir)
	cur, curFI := "/", fi
	if f := judge("/", fi, len(todo) == 0); f != nil {
		return f, "", nil
	}
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			if curFI, err = os.Lstat(cur); err != nil {
				return nil, "", err
			}
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, next, nil
		}
		if err != nil {
			return nil, "", err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			// The link lives in cur, which passed: only root or we can
			// change it — unless cur is sticky and world-writable, where
			// its owner can.
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && curFI.Mode().Perm()&0o022 != 0 && !trusted(st.Uid) {
				return &dirFault{path: next, owner: st.Uid, mode: fi.Mode(), wrongUID: true, link: true}, "", nil
			}
			if links++; links > maxLinks {
				return nil, "", fmt.Errorf("%s: too many levels of symbolic links", dir)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return nil, "", err
			}
			if filepath.IsAbs(target) {
				cur = "/"
				if curFI, err = os.Lstat("/"); err != nil {
					return nil, "", err
				}
			}
			todo = append(components(target), todo...)
			continue
		}
		if !fi.IsDir() {
			return nil, "", fmt.Errorf("%s is not a directory", next)
		}
		if f := judge(next, fi, len(todo) == 0); f != nil {
			return f, "", nil
		}
		cur, curFI = next, fi
	}
	return nil, "", nil
}

func components(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// checkDir refuses (ErrUnsafeDir, a full sentence naming the component and
// the command that fixes it) a directory that someone other than root and
// the agent's user could change; role says what the directory is for the
// message ("data_dir /var/lib/edgefleet"), suggest is a safe alternative.
// A directory that does not exist yet passes when its parents do.
func checkDir(dir, role, suggest string) error {
	f, _, err := walkDir(dir)
	if err != nil {
		return fmt.Errorf("check who can change %s: %w", role, err)
	}
	if f == nil {
		return nil
	}
	return f.error(dir, role, suggest)
}

// ensureDir creates dir (and missing parents) with mode perm, checking
// every component before and after each mkdir, so it never creates
// anything under a directory another user controls.
func ensureDir(dir string, perm fs.FileMode, role, suggest string) error {
	for range 64 {
		f, missing, err := walkDir(dir)
		if err != nil {
			return fmt.Errorf("check who can change %s: %w", role, err)
		}
		if f != nil {
			return f.error(dir, role, suggest)
		}
		if missing == "" {
			return nil
		}
		if err := os.Mkdir(missing, perm); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue // someone made it meanwhile: judge what is there
			}
			return fmt.Errorf("create %s: %w", missing, err)
		}
		// The umask may have cleared bits of perm or left group write on:
		// set exactly perm, on the directory just made (never a link).
		d, err := os.OpenFile(missing, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open the new directory %s: %w", missing, err)
		}
		err = d.Chmod(perm)
		d.Close()
		if err != nil {
			return fmt.Errorf("set the mode of %s: %w", missing, err)
		}
	}
	return fmt.Errorf("%s keeps changing while the agent creates it; check what else writes there: %w", dir, ErrUnsafeDir)
}

func (f *dirFault) error(dir, role, suggest string) error {
	me := userName(uint32(os.Geteuid()))
	chown := "chown " + me
	if me == "root" {
		chown = "chown root:root"
	}
	who := fmt.Sprintf("%s (uid %d)", userName(f.owner), f.owner)
	what := f.path
	if f.path != dir {
		what = fmt.Sprintf("%s, a parent of %s,", f.path, dir)
	}
	var fault, fix string
	switch {
	case f.link:
		fault = fmt.Sprintf("%s is a symbolic link owned by %s in a directory everyone can write to", what, who)
		fix = fmt.Sprintf("replace the link with one owned by %s, or configure the real path", me)
	case f.wrongUID:
		fault = fmt.Sprintf("%s is owned by %s, not by %s, the user the agent runs as", what, who, me)
		fix = fmt.Sprintf("run `%s %s && chmod go-w %s`", chown, f.path, f.path)
	default:
		mode := uint32(f.mode.Perm())
		if f.mode&fs.ModeSticky != 0 {
			mode |= 0o1000
		}
		fault = fmt.Sprintf("%s can be written by its group or by everyone (mode %04o)", what, mode)
		fix = fmt.Sprintf("run `chmod go-w %s`", f.path)
	}
	if suggest != "" {
		fix += ", or " + suggest
	}
	return fmt.Errorf("%s: %s, so another user could plant a link there and make the agent (running as %s) overwrite another file or bring back old state; the agent changes nothing there until that is fixed — %s: %w",
		role, fault, me, fix, ErrUnsafeDir)
}

// userName is uid's name from /etc/passwd, or "uid N".
func userName(uid uint32) string {
	f, err := os.Open("/etc/passwd")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) > 2 && fields[2] == strconv.FormatUint(uint64(uid), 10) {
				return fields[0]
			}
		}
	}
	return fmt.Sprintf("uid %d", uid)
}

// checkDataDir checks data_dir (see checkDir).
func checkDataDir(cfg *Config) error {
	return checkDir(cfg.DataDir, "data_dir "+cfg.DataDir, "choose a data_dir only root can change, such as /var/lib/edgefleet")
}

// ensureDataDir creates data_dir (mode 0700) when missing and checks it.
func ensureDataDir(cfg *Config) error {
	return ensureDir(cfg.DataDir, 0o700, "data_dir "+cfg.DataDir, "choose a data_dir only root can change, such as /var/lib/edgefleet")
}

func appDirRole(app *AppConfig) (role, suggest string) {
	return fmt.Sprintf("the directory %s of app %s", filepath.Dir(app.Path), app.Name),
		fmt.Sprintf("configure a path in a directory only root can change, such as /opt/%s/bin/%s", app.Name, filepath.Base(app.Path))
}

// checkAppDir checks the directory of app's binary (see checkDir).
func checkAppDir(app *AppConfig) error {
	role, suggest := appDirRole(app)
	return checkDir(filepath.Dir(app.Path), role, suggest)
}

// ensureAppDir creates the app's directory (mode 0755) when missing and
// checks it.
func ensureAppDir(app *AppConfig) error {
	role, suggest := appDirRole(app)
	return ensureDir(filepath.Dir(app.Path), 0o755, role, suggest)
}

// removeLeftover removes a regular file the agent left at path in an
// earlier run; anything else there (a symbolic link, a directory, a
// device) is refused and left alone.
func removeLeftover(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is %s, not a file the agent left there; the agent does not write through it — remove it, and find out who can write to %s: %w",
			path, describeMode(fi.Mode()), filepath.Dir(path), ErrUnsafeDir)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the leftover %s: %w", path, err)
	}
	return nil
}

// removeStaged removes a staged or check file after a refusal when it is
// a regular file; anything else there (a planted link) is left for the
// operator to see, as the refusal said.
func removeStaged(path string) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		os.Remove(path)
	}
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "not a regular file"
}

// createFile creates path afresh for writing, never through a link: a
// leftover regular file is removed first (removeLeftover), then the file
// is created with O_CREAT|O_EXCL|O_NOFOLLOW, so a link planted in between
// makes it fail instead of writing through it.
func createFile(path string, perm fs.FileMode) (*os.File, error) {
	if err := removeLeftover(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%s appeared while the agent was creating it; something else writes to %s — find out what: %w", path, filepath.Dir(path), ErrUnsafeDir)
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

// openPartFile opens (or creates) a download's .part file in data_dir/dl
// for reading and writing, never through a link: the dl directory must be
// a real directory only the agent's user can change, an existing file must
// be a regular file (O_NOFOLLOW), and a new one is created with O_EXCL.
func openPartFile(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	if err := checkDir(dir, "the download directory "+dir, ""); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(dir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("the download directory %s is %s; remove it so the agent can create the directory: %w", dir, describeMode(fi.Mode()), ErrUnsafeDir)
	}
	// O_NONBLOCK: a named pipe planted there must not hang the open (it
	// has no effect on a regular file).
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	}
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link, not a download the agent left there; the agent does not write through it — remove it, and find out who can write to %s: %w", path, dir, ErrUnsafeDir)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is %s, not a download the agent left there; remove it: %w", path, describeMode(fi.Mode()), ErrUnsafeDir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		// A hard link to another file: writing would change that file.
		f.Close()
		return nil, fmt.Errorf("%s has %d hard links, so it is not a download the agent left there; the agent does not write to it — remove it, and find out who can write to %s: %w", path, st.Nlink, dir, ErrUnsafeDir)
	}
	return f, nil
}

// openNoFollow opens an existing file for reading without following a
// symbolic link at its last component.
func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}
