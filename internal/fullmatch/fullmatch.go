// Package fullmatch matches a string against a regular expression as
// Envoy's safe_regex matchers do, the whole string, compiling each
// expression once: the path, header and query conditions of Consul's
// service-routers and service-intentions.
package fullmatch

import (
	"regexp"
	"sync"
)

var compiled sync.Map // expression -> *regexp.Regexp, or nil when it does not compile

// Match reports whether expr (RE2) matches all of s. An expression that
// does not compile never matches: Consul refuses to store one.
func Match(expr, s string) bool {
	re, ok := compiled.Load(expr)
	if !ok {
		c, err := regexp.Compile(`^(?:` + expr + `)$`)
		if err != nil {
			c = nil
		}
		re, _ = compiled.LoadOrStore(expr, c)
	}
	c, _ := re.(*regexp.Regexp)
	return c != nil && c.MatchString(s)
}
