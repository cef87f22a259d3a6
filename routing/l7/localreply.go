package l7

import (
	"net/http"
	"strconv"
	"strings"
)

// The bodies of the answers Envoy's router gives itself, which clients and
// dashboards know.
const (
	bodyNoHealthyUpstream = "no healthy upstream"
	bodyRequestTimeout    = "upstream request timeout"
	bodyStreamTimeout     = "stream timeout"
	bodyResetBefore       = "upstream connect error or disconnect/reset before headers. "
	bodyOverflow          = bodyResetBefore + "reset reason: overflow"
)

// isGRPC reports whether r is a gRPC request, as Envoy's
// Grpc::Common::hasGrpcContentType decides: a Content-Type of
// application/grpc, or application/grpc followed by '+' or ';'.
func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// grpcStatusOf maps an HTTP status to a gRPC status code as Envoy's
// Grpc::Utility::httpToGrpcStatus does for its local replies.
func grpcStatusOf(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound:
		return 12 // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// localReply answers r itself, as Envoy's sendLocalReply: code with body
// as text, or to a gRPC client a trailers-only answer, HTTP 200 with the
// grpc-status Envoy maps code to and the body as grpc-message. header, if
// not nil, is added to the answer.
func localReply(w http.ResponseWriter, r *http.Request, code int, body string, header http.Header) {
	h := w.Header()
	for k, vs := range header {
		h[k] = append(h[k], vs...)
	}
	if isGRPC(r) {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcStatusOf(code)))
		if body == "" {
			body = http.StatusText(code)
		}
		h.Set("Grpc-Message", grpcMessage(body))
		w.WriteHeader(http.StatusOK)
		return
	}
	if body == "" {
		w.WriteHeader(code)
		return
	}
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		w.Write([]byte(body))
	}
}

// grpcMessage percent-encodes s as gRPC's grpc-message wants it: bytes
// outside printable ASCII, and '%', as %XX.
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteString("%" + strings.ToUpper(strconv.FormatUint(uint64(c)>>4, 16)+strconv.FormatUint(uint64(c)&0xf, 16)))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
