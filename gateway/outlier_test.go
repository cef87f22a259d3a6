package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestOutliersEjectAfterConsecutiveFailures(t *testing.T) {
	now := time.Unix(1000, 0)
	o := newOutliers(0, 0)
	o.now = func() time.Time { return now }
	targets := []string{"a:1", "b:1", "c:1"}

	for i := 1; i < DefaultEjectAfter; i++ {
		assert.False(t, o.failed("a:1"), "failure %d", i)
	}
	assert.Equal(t, targets, o.order(targets), "not yet ejected")
	o.succeeded("a:1")
	for i := 1; i < DefaultEjectAfter; i++ {
		o.failed("a:1")
	}
	assert.Equal(t, targets, o.order(targets), "a success starts the count again")
	assert.True(t, o.failed("a:1"), "the fifth consecutive failure ejects")
	assert.Equal(t, []string{"b:1", "c:1", "a:1"}, o.order(targets), "ejected: tried last")

	now = now.Add(time.Second)
	for range DefaultEjectAfter {
		o.failed("b:1")
	}
	assert.Equal(t, []string{"c:1", "a:1", "b:1"}, o.order(targets), "the one back soonest first")
	assert.Equal(t, []string{"a:1"}, o.order([]string{"a:1"}), "the last endpoint is still tried")

	now = now.Add(DefaultEjectFor - time.Second) // a was ejected a second before b
	assert.Equal(t, []string{"a:1", "c:1", "b:1"}, o.order(targets), "a's ejection is over")
	assert.True(t, o.failed("a:1"), "one more failure ejects it again")
	o.succeeded("a:1")
	o.succeeded("b:1")
	assert.Equal(t, targets, o.order(targets))
	assert.Zero(t, o.tracked.Load(), "healthy targets are forgotten")

	off := newOutliers(-1, 0)
	for range 10 {
		assert.False(t, off.failed("a:1"))
	}
	assert.Equal(t, targets, off.order(targets), "EjectAfter < 0: off")
}
