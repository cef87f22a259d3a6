package fullmatch

import "testing"

func TestMatchIsWholeAndNeverForABadExpression(t *testing.T) {
	for _, tc := range []struct {
		expr, s string
		want    bool
	}{
		{"/items/[0-9]+", "/items/42", true},
		{"/items/[0-9]+", "/items/42/x", false},
		{"/items/[0-9]+", "/v1/items/42", false},
		{"a|b", "b", true},
		{"a|b", "ab", false},
		{"(", "(", false},
	} {
		for range 2 { // compiled, then cached
			if got := Match(tc.expr, tc.s); got != tc.want {
				t.Errorf("Match(%q, %q) = %v, want %v", tc.expr, tc.s, got, tc.want)
			}
		}
	}
}
