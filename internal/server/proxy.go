package server

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientIP is the address a request comes from. The TCP peer, unless it
// is one of Options.TrustedProxies: then the Forwarded (or
// X-Forwarded-For) chain is walked from the nearest hop back, skipping
// trusted proxies, and the first other address is the client. A chain
// that cannot be read yields the invalid address, which nothing trusts.
func (s *Server) clientIP(r *http.Request) netip.Addr {
	peer := parseHop(r.RemoteAddr)
	if len(s.opts.TrustedProxies) == 0 || !s.isProxy(peer) {
		return peer
	}
	hops, ok := forwardedFor(r.Header)
	if !ok {
		return netip.Addr{}
	}
	for i := len(hops) - 1; i >= 0; i-- {
		ip := parseHop(hops[i])
		if !ip.IsValid() {
			return netip.Addr{}
		}
		if !s.isProxy(ip) || i == 0 {
			return ip
		}
	}
	return peer // no header: the proxy itself is the client
}

func (s *Server) isProxy(ip netip.Addr) bool {
	for _, p := range s.opts.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// maxHops bounds the forwarding chain read from one request.
const maxHops = 32

// forwardedFor returns the "for" addresses of the Forwarded header, or
// else of X-Forwarded-For, client first. ok is false when the header is
// malformed or too long.
func forwardedFor(h http.Header) (hops []string, ok bool) {
	if fw := h.Values("Forwarded"); len(fw) > 0 {
		for _, elem := range strings.Split(strings.Join(fw, ","), ",") {
			found := false
			for _, pair := range strings.Split(elem, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(pair), "=")
				if strings.EqualFold(k, "for") {
					hops = append(hops, strings.Trim(v, `"`))
					found = true
				}
			}
			if !found || len(hops) > maxHops {
				return nil, false
			}
		}
		return hops, true
	}
	for _, v := range h.Values("X-Forwarded-For") {
		for _, hop := range strings.Split(v, ",") {
			hops = append(hops, strings.TrimSpace(hop))
			if len(hops) > maxHops {
				return nil, false
			}
		}
	}
	return hops, true
}

// parseHop reads "1.2.3.4", "1.2.3.4:80", "[::1]:80" or "::1".
func parseHop(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
		return ip.Unmap()
	}
	return netip.Addr{}
}

// remoteAddr is the client's address as auth sees it (nil: unknown).
func (s *Server) remoteAddr(r *http.Request) net.Addr {
	ip := s.clientIP(r)
	if !ip.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
}

// clientKey names the client's address for per-address limits.
func (s *Server) clientKey(r *http.Request) string {
	ip := s.clientIP(r)
	if !ip.IsValid() {
		return "unknown"
	}
	return ip.String()
}
