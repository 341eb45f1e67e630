package main

import (
	"regexp"
	"runtime/debug"
	"strings"
)

// semverRE is the semantic version grammar (semver.org), as the micro
// service checks it.
var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// sanitize keeps the characters a semver pre-release may hold.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-' || r == '.' {
			return r
		}
		return '-'
	}, s)
}

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// buildVersion returns the version to print and log and the same as a
// semantic version for the micro service. It is the -ldflags version, else
// the module version from the build info (for a build from a git checkout
// with VCS stamping on, go build's default -buildvcs=auto, a pseudo-version
// holding the revision, "+dirty" when the checkout was modified), else
// "devel-<revision>" when only the revision is stamped, else "dev".
func buildVersion() (text, semver string) {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if v != "" {
		sv := strings.TrimPrefix(v, "v")
		if !semverRE.MatchString(sv) {
			sv = "0.0.0-" + sanitize(sv)
		}
		return v, sv
	}
	var rev string
	var dirty bool
	if ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if rev == "" {
		return "dev", "0.0.0-dev"
	}
	rev = rev[:min(12, len(rev))]
	text, semver = "devel-"+rev, "0.0.0-devel+"+rev
	if dirty {
		text, semver = text+"-dirty", semver+".dirty"
	}
	return text, semver
}

// Version is the build's version as printed by `presenced version`.
func Version() string {
	v, _ := buildVersion()
	return v
}
