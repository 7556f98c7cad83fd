package testkit

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/chromedp"
)

// ChromiumPath is the Chromium (or Chrome) executable: $EDGEFLEET_CHROMIUM,
// then PATH; when there is none it skips t loudly, saying what did not
// run.
func ChromiumPath(t testing.TB, what string) string {
	t.Helper()
	if p := os.Getenv("EDGEFLEET_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skipf("SKIPPED: Chromium is not installed (scripts/test.sh installs it: apt-get install chromium; or set EDGEFLEET_CHROMIUM); %s did not run", what)
	return ""
}

// Browser starts a real headless Chromium (ChromiumPath) with a fresh
// profile and returns a chromedp context for one tab, valid until the
// test ends; each chromedp.Run on it is bounded by timeout.
func Browser(t testing.TB, what string, width, height int) context.Context {
	t.Helper()
	bin := ChromiumPath(t, what)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Headless,
		chromedp.NoSandbox, // root in a container: the sandbox needs namespaces we may not have
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("force-color-profile", "srgb"),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	// Start the browser now, so a broken install fails here, clearly.
	// (The first Run's context owns the browser: no timeout on it.)
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start Chromium %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return ctx
}
