package l7

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// MaxReplayBytes bounds the request body a Terminator keeps to send again
// on a retry: 1 MiB, Envoy's per_connection_buffer_limit_bytes default,
// which Consul leaves for the gateway's listener. The body streams to the
// instance as it arrives; a copy is kept alongside, and once the body
// passes the bound the copy is dropped and the request is not retried
// (Envoy's retry_or_shadow_abandoned).
const MaxReplayBytes = 1 << 20

// Envoy's retry defaults, which Consul leaves unset: one retry when a
// policy names conditions but no count, and a jittered back-off from 25 ms,
// capped at 250 ms.
const (
	defaultNumRetries = 1
	retryBaseInterval = 25 * time.Millisecond
	retryMaxInterval  = 250 * time.Millisecond
)

// Retry conditions, Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on
// values that Consul's service-router accepts (isValidRetryCondition), and
// the one it adds for RetryOnStatusCodes.
const (
	retryOn5xx               = "5xx"
	retryOnGatewayError      = "gateway-error"
	retryOnReset             = "reset"
	retryOnConnectFailure    = "connect-failure"
	retryOnEnvoyRateLimited  = "envoy-ratelimited"
	retryOnRetriable4xx      = "retriable-4xx"
	retryOnRefusedStream     = "refused-stream"
	retryOnStatusCodes       = "retriable-status-codes"
	retryOnCancelled         = "cancelled"
	retryOnDeadlineExceeded  = "deadline-exceeded"
	retryOnInternal          = "internal"
	retryOnResourceExhausted = "resource-exhausted"
	retryOnUnavailable       = "unavailable"
)

// grpcRetryCodes maps the gRPC retry conditions to their status codes.
var grpcRetryCodes = map[string]int{
	retryOnCancelled:         1,
	retryOnDeadlineExceeded:  4,
	retryOnResourceExhausted: 8,
	retryOnInternal:          13,
	retryOnUnavailable:       14,
}

// retryPolicy is a route's retries as Envoy runs them: the zero value
// retries nothing.
type retryPolicy struct {
	numRetries int
	on         map[string]bool
	codes      []uint32 // retriable-status-codes
	grpcCodes  []int
}

// retryPolicyOf returns the retry policy Consul's getRetryPolicyForDestination
// builds for a service-router destination (nil: none), or an error naming a
// condition Consul does not accept.
func retryPolicyOf(d *api.ServiceRouteDestination) (retryPolicy, error) {
	if d == nil || !(d.NumRetries > 0 || d.RetryOnConnectFailure || len(d.RetryOnStatusCodes) > 0 || len(d.RetryOn) > 0) {
		return retryPolicy{}, nil
	}
	p := retryPolicy{numRetries: defaultNumRetries, on: map[string]bool{}}
	if d.NumRetries > 0 {
		p.numRetries = int(d.NumRetries)
	}
	for _, c := range d.RetryOn {
		switch c {
		case retryOn5xx, retryOnGatewayError, retryOnReset, retryOnConnectFailure, retryOnEnvoyRateLimited,
			retryOnRetriable4xx, retryOnRefusedStream:
		default:
			code, ok := grpcRetryCodes[c]
			if !ok {
				return retryPolicy{}, fmt.Errorf("l7: RetryOn %q is not a retry condition Consul accepts", c)
			}
			p.grpcCodes = append(p.grpcCodes, code)
		}
		p.on[c] = true
	}
	if d.RetryOnConnectFailure {
		p.on[retryOnConnectFailure] = true
	}
	if len(d.RetryOnStatusCodes) > 0 {
		p.on[retryOnStatusCodes] = true
		p.codes = d.RetryOnStatusCodes
	}
	return p, nil
}

// active reports whether the policy can retry anything: Envoy with an
// empty retry_on (NumRetries alone) retries nothing.
func (p retryPolicy) active() bool { return p.numRetries > 0 && len(p.on) > 0 }

// String says what the policy retries, for logs.
func (p retryPolicy) String() string {
	if !p.active() {
		return "none"
	}
	var on []string
	for c := range p.on {
		on = append(on, c)
	}
	slices.Sort(on)
	s := fmt.Sprintf("%d on %s", p.numRetries, strings.Join(on, ","))
	if len(p.codes) > 0 {
		s += fmt.Sprint(" ", p.codes)
	}
	return s
}

// failure is what went wrong with an attempt that got no answer.
type failure int

const (
	noFailure      failure = iota
	connectFailure         // the dial or the TLS handshake to the instance
	resetFailure           // the connection or stream ended before the answer
	refusedStream          // the instance refused the HTTP/2 stream
)

// retryResponse reports whether the policy retries an answer.
func (p retryPolicy) retryResponse(resp *http.Response) bool {
	code := resp.StatusCode
	switch {
	case p.on[retryOn5xx] && code >= 500:
		return true
	case p.on[retryOnGatewayError] && (code == 502 || code == 503 || code == 504):
		return true
	case p.on[retryOnRetriable4xx] && code == http.StatusConflict:
		return true
	case p.on[retryOnStatusCodes] && slices.Contains(p.codes, uint32(code)):
		return true
	case p.on[retryOnEnvoyRateLimited] && resp.Header.Get("X-Envoy-Ratelimited") != "":
		return true
	}
	if len(p.grpcCodes) > 0 {
		// A gRPC status in the headers: a trailers-only answer.
		if s := resp.Header.Get("Grpc-Status"); s != "" {
			if n, err := strconv.Atoi(s); err == nil && slices.Contains(p.grpcCodes, n) {
				return true
			}
		}
	}
	return false
}

// retryFailure reports whether the policy retries an attempt that failed
// with f: Envoy's router retries a reset for 5xx, gateway-error and reset,
// a failed connect for those and connect-failure, a refused stream for
// those and refused-stream.
func (p retryPolicy) retryFailure(f failure) bool {
	any5xx := p.on[retryOn5xx] || p.on[retryOnGatewayError] || p.on[retryOnReset]
	switch f {
	case connectFailure:
		return any5xx || p.on[retryOnConnectFailure]
	case resetFailure:
		return any5xx
	case refusedStream:
		return any5xx || p.on[retryOnRefusedStream]
	}
	return false
}

// retryBackoff is Envoy's jittered exponential back-off before retry n
// (1 for the first): a random wait below (2^n - 1) x 25 ms, at most
// 250 ms.
func retryBackoff(n int) time.Duration {
	limit := retryMaxInterval
	if n < 8 {
		limit = min(time.Duration(1<<n-1)*retryBaseInterval, retryMaxInterval)
	}
	return time.Duration(rand.Int64N(int64(limit)))
}

// errReplay is the error of an attempt's body once another attempt has
// taken over, or when the body can no longer be sent again.
var errReplay = errors.New("l7: the request body of a finished attempt")

// replayBody shares one request body among the attempts of a request: it
// streams from the client as the current attempt reads it, keeping a copy
// of up to limit bytes for the next attempt. Past the limit the copy is
// dropped and replayable reports false. A finished attempt's reader fails,
// so a transport still writing an old attempt never takes bytes meant for
// the next one.
type replayBody struct {
	src   io.ReadCloser
	limit int

	mu       sync.Mutex
	reading  bool // someone is in src.Read
	cond     sync.Cond
	kept     []byte
	read     int // bytes read from src
	overflow bool
	err      error // src's final error (io.EOF when done)
	current  *attemptBody
	onEOF    func() // once, when src is done
}

func newReplayBody(src io.ReadCloser, limit int, onEOF func()) *replayBody {
	r := &replayBody{src: src, limit: limit, onEOF: onEOF}
	r.cond.L = &r.mu
	return r
}

// replayable reports whether a new attempt can send the whole body again.
func (r *replayBody) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.overflow
}

// attempt returns the body of a new attempt, ending the previous one's.
func (r *replayBody) attempt() io.ReadCloser {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current != nil {
		r.current.done = true
	}
	r.current = &attemptBody{r: r}
	r.cond.Broadcast()
	return r.current
}

// attemptBody is one attempt's view of a replayBody. Its Close leaves the
// client's body open for the next attempt.
type attemptBody struct {
	r    *replayBody
	off  int
	done bool
}

func (a *attemptBody) Read(p []byte) (int, error) {
	r := a.r
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		switch {
		case a.done:
			return 0, errReplay
		case a.off < r.read:
			if r.overflow {
				return 0, errReplay // the bytes this attempt needs are gone
			}
			n := copy(p, r.kept[a.off:])
			a.off += n
			return n, nil
		case r.err != nil:
			return 0, r.err
		case r.reading:
			r.cond.Wait()
			continue
		}
		r.reading = true
		r.mu.Unlock()
		n, err := r.src.Read(p)
		r.mu.Lock()
		r.reading = false
		r.cond.Broadcast()
		if n > 0 {
			if !r.overflow && r.read+n <= r.limit {
				r.kept = append(r.kept, p[:n]...)
			} else {
				r.overflow, r.kept = true, nil
			}
			r.read += n
		}
		if err != nil {
			r.err = err
			if err == io.EOF && r.onEOF != nil {
				r.onEOF()
				r.onEOF = nil
			}
		}
		if a.done {
			// Another attempt took over while this one read: the bytes are
			// kept (or the overflow noted) for it.
			return 0, errReplay
		}
		a.off += n
		if n > 0 {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

func (a *attemptBody) Close() error { return nil }
