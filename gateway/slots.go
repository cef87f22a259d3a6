package gateway

// acquireSlot waits until one more connection may be opened, under
// MaxConns and then under the process's descriptor budget; it returns false
// if the server closed meanwhile.
func (s *Server) acquireSlot() bool {
	if s.slots != nil && !s.take(s.slots, LimitMaxConns) {
		return false
	}
	if b := s.budget; b != nil && !s.take(b.slots, LimitOpenFiles) {
		if s.slots != nil {
			<-s.slots
		}
		return false
	}
	return true
}

// take puts a token in slots, waiting if it is full: a LimitObserver hears
// of each wait, and the first wait on the open-file limit is logged. It
// returns false if the server closed while it waited.
func (s *Server) take(slots chan struct{}, limit string) bool {
	if s.tryTake(slots, limit, true) {
		return true
	}
	select {
	case slots <- struct{}{}:
		return true
	case <-s.done:
		return false
	}
}

// heldBackBy tells a LimitObserver that accepting waits on limit.
func (s *Server) heldBackBy(limit string) {
	if o, ok := s.Observer.(LimitObserver); ok {
		o.HeldBack(limit)
	}
}

// releaseSlot frees what acquireSlot took.
func (s *Server) releaseSlot() {
	if b := s.budget; b != nil {
		<-b.slots
	}
	if s.slots != nil {
		<-s.slots
	}
}

// tryTake puts a token in slots if it is not full; if it is, it returns
// false, and with report a LimitObserver hears of it and the first time on
// the open-file limit is logged.
func (s *Server) tryTake(slots chan struct{}, limit string, report bool) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	if !report {
		return false
	}
	s.heldBackBy(limit)
	if b := s.budget; limit == LimitOpenFiles && !s.heldBack.Swap(true) {
		s.logger().Warn("gateway: the open-file limit holds new connections back; they wait in the listen backlog until connections close (raise ulimit -n to serve more at once)",
			"open_file_limit", b.nofile, "conn_limit", b.conns)
	}
	return false
}

// trySlot is acquireSlot for an event loop, which must not wait: it takes
// a slot if one is free at once. report is tryTake's.
func (s *Server) trySlot(report bool) bool {
	if s.slots != nil && !s.tryTake(s.slots, LimitMaxConns, report) {
		return false
	}
	if b := s.budget; b != nil && !s.tryTake(b.slots, LimitOpenFiles, report) {
		if s.slots != nil {
			<-s.slots
		}
		return false
	}
	return true
}
