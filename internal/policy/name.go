package policy

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxNameLen keeps a name usable as a DNS label under --domain.
const maxNameLen = 63

// CanonicalName validates a device name (1–63 letters, digits, '-', '_' and '.', neither
// starting nor ending with '.', without "..") and returns it in lower case, or an error saying
// what is wrong.
func CanonicalName(s string) (string, error) {
	if why := nameProblem(s); why != "" {
		return "", fmt.Errorf("policy: invalid name %s: %s", clip(s), why)
	}
	return strings.ToLower(s), nil
}

// nameProblem returns what makes s an invalid name, or "".
func nameProblem(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > maxNameLen {
		return fmt.Sprintf("longer than %d characters", maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !isNameByte(s[i]) {
			r, _ := utf8.DecodeRuneInString(s[i:])
			return fmt.Sprintf("%q is not allowed (only letters, digits, '-', '_' and '.')", r)
		}
	}
	switch {
	case s[0] == '.':
		return "starts with '.'"
	case s[len(s)-1] == '.':
		return "ends with '.'"
	case strings.Contains(s, ".."):
		return `contains ".."`
	}
	return ""
}

func isNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.'
}

// globMatch reports whether s matches pattern, where '*' matches any run of bytes and '?'
// exactly one byte, as OpenSSH's match_pattern does. Unlike OpenSSH's recursive version it
// backtracks only to the last '*', so hostile patterns cost O(len(s)·len(pattern)).
func globMatch(s, pattern string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, -1 // where to resume if the bytes after the last '*' fail to match
	for px < len(pattern) || sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starPx, starSx = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if starPx >= 0 && starSx <= len(s) {
			px, sx = starPx+1, starSx
			starSx++
			continue
		}
		return false
	}
	return true
}

// clip quotes s for an error message, shortened so a hostile file cannot flood the log.
func clip(s string) string {
	const limit = 64
	if len(s) > limit {
		return fmt.Sprintf("%q…", s[:limit])
	}
	return fmt.Sprintf("%q", s)
}
