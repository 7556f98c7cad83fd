package main

import (
	"fmt"
	"strings"
	"unicode"
)

// commonPassphrases are passphrases (lower-cased) tried first by anyone
// who steals an encrypted key file: scrypt slows a guess down, it does not
// stop a dictionary.
var commonPassphrases = []string{"password", "passw0rd", "123456", "12345678", "123456789", "qwerty", "letmein",
	"changeme", "secret", "edgefleet", "minisign", "admin", "welcome", "iloveyou", "correct horse battery staple"}

// passphraseWeakness says why p is weak ("" when it is not): shorter than
// 12 characters, few distinct characters, or a well-known one.
func passphraseWeakness(p string) string {
	l := strings.ToLower(p)
	for _, c := range commonPassphrases {
		if l == c {
			return "it is one of the most common passphrases"
		}
	}
	n := len([]rune(p))
	if n < 12 {
		return fmt.Sprintf("it is %d characters long; use at least 12 (several words are easy to remember)", n)
	}
	distinct := map[rune]bool{}
	classes := map[string]bool{}
	for _, r := range p {
		distinct[r] = true
		switch {
		case unicode.IsLower(r):
			classes["lower"] = true
		case unicode.IsUpper(r):
			classes["upper"] = true
		case unicode.IsDigit(r):
			classes["digit"] = true
		default:
			classes["other"] = true
		}
	}
	if len(distinct) < 6 {
		return fmt.Sprintf("it uses only %d distinct characters", len(distinct))
	}
	if n < 16 && len(classes) < 2 {
		return "it is shorter than 16 characters and uses one kind of character only"
	}
	return ""
}

// warnWeakPassphrase prints a loud warning for a weak passphrase; the key
// is still written (the operator may have reasons), but never silently.
func warnWeakPassphrase(env *cliEnv, p string) {
	if why := passphraseWeakness(p); why != "" {
		fmt.Fprintf(env.stderr, "WARNING: weak passphrase: %s. Whoever copies the key file can guess it offline and sign releases; consider generating the key again with a stronger passphrase.\n", why)
	}
}
