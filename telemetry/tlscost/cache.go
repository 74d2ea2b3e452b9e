package tlscost

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// The calibration costs one to two seconds of CPU. A fresh edge that ran it at every
// start would be slower than it should for its first seconds, under load too (a restart,
// a deploy, an instance added to a group); so what it measures is kept in a file and
// used as is by the next start of the same build on the same machine: the key is the
// executable's Go build ID, the CPU model, the kernel release and GOMAXPROCS, what the
// costs depend on. A file that cannot be read or written is no error: the edge calibrates
// and serves on.

// cacheFormat changes whenever Costs or calSamples change meaning; older files are then
// ignored.
const cacheFormat = 3

// cacheKey is what the costs measured depend on.
type cacheKey struct {
	Format     int    `json:"format"`
	Build      string `json:"build"`
	CPU        string `json:"cpu"`
	Kernel     string `json:"kernel"`
	GOMAXPROCS int    `json:"gomaxprocs"`
}

// cacheFile is the file's content.
type cacheFile struct {
	Key      cacheKey  `json:"key"`
	Measured time.Time `json:"measured"`
	Costs    *Costs    `json:"costs"`
	// Samples are what the fitted terms of Costs come from; refinement adds to them
	// (refine.go). Absent when the data terms were not measured.
	Samples *calSamples `json:"samples,omitempty"`
}

// currentCacheKey is the key of this process on this machine.
func currentCacheKey() cacheKey {
	return cacheKey{Format: cacheFormat, Build: buildID(), CPU: cpuModel(), Kernel: kernelRelease(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
}

// path is the file for k in dir: the key's hash in the name, so that builds and
// GOMAXPROCS settings sharing a directory keep their own.
func (k cacheKey) path(dir string) string {
	b, _ := json.Marshal(k)
	h := sha256.Sum256(b)
	return filepath.Join(dir, "tlscost-"+hex.EncodeToString(h[:8])+".json")
}

// DefaultCacheDir is where the calibration is kept when Options.CacheDir is empty: the
// directory systemd gives the unit (CACHE_DIRECTORY from CacheDirectory=, else
// STATE_DIRECTORY from StateDirectory=; the first of a colon-separated list), else the
// user's cache directory (os.UserCacheDir, edgeproxy/ in it); "" when there is none.
func DefaultCacheDir() string {
	for _, env := range []string{"CACHE_DIRECTORY", "STATE_DIRECTORY"} {
		if dirs := os.Getenv(env); dirs != "" {
			first, _, _ := strings.Cut(dirs, ":")
			return first
		}
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "edgeproxy")
	}
	return ""
}

// loadCachedCosts returns the calibration kept in dir for k, or an error saying why none
// is.
func loadCachedCosts(dir string, k cacheKey) (*cacheFile, error) {
	b, err := os.ReadFile(k.path(dir))
	if err != nil {
		return nil, err
	}
	var f cacheFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", k.path(dir), err)
	}
	if f.Key != k || f.Costs == nil || f.Costs.Seal[AES128GCM].PerByte <= 0 || f.Costs.HandshakeFactor < 1 {
		return nil, fmt.Errorf("%s: not a calibration of this build on this machine", k.path(dir))
	}
	if f.Costs.Open == nil {
		f.Costs.Open = map[string]Linear{}
	}
	if s := f.Samples; s != nil && (len(s.Bulk) != len(s.Small) || len(s.Bulk) == 0 || s.StartUp < 0 || s.StartUp > len(s.Bulk)) {
		f.Samples = nil // not refinable: the costs stand as they are
	}
	return &f, nil
}

// storeCosts writes c and the samples it was fitted from (may be nil) for k into dir
// (created 0700 if missing), atomically: a start-up that reads it meanwhile finds the old
// file or the new one.
func storeCosts(dir string, k cacheKey, c *Costs, s *calSamples) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(cacheFile{Key: k, Measured: time.Now().UTC(), Costs: c, Samples: s}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tlscost-*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(b)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), k.path(dir))
	}
	if werr != nil {
		_ = os.Remove(tmp.Name())
	}
	return werr
}

// buildID is the Go build ID of this executable (its ELF note), else its size and
// modification time, else "".
func buildID() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	if f, err := elf.Open(exe); err == nil {
		defer f.Close()
		if s := f.Section(".note.go.buildid"); s != nil {
			if b, err := s.Data(); err == nil && len(b) > 16 {
				// Name size, description size, type (4 bytes each), "Go\0\0", the ID.
				return strings.TrimRight(string(b[16:]), "\x00")
			}
		}
	}
	if st, err := os.Stat(exe); err == nil {
		return fmt.Sprintf("%s %d %d", exe, st.Size(), st.ModTime().UnixNano())
	}
	return ""
}

// cpuModel is the CPU's model name as /proc/cpuinfo gives it, else the architecture.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

// kernelRelease is the running kernel's release (Linux), else the OS name.
func kernelRelease() string {
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		return strings.TrimSpace(string(b))
	}
	return runtime.GOOS
}
