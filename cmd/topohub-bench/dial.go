package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// dialers spreads connections over source addresses. On loopback one
// address gives about 28k ephemeral ports (and TIME_WAIT holds them after
// a run), so a loopback hub is dialled from 127.0.0.1..127.0.0.N, which
// Linux routes without configuration.
type dialers struct {
	hub    *url.URL
	addr   string // host:port to dial
	tls    *tls.Config
	raw    []*net.Dialer
	ws     []*http.Client
	trans  []*http.Transport
	source []string // source addresses in use, for the log
}

func newDialers(cfg *config) (*dialers, error) {
	u, err := url.Parse(cfg.HubURL)
	if err != nil {
		return nil, fmt.Errorf("--hub: %w", err)
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	d := &dialers{hub: u, addr: net.JoinHostPort(u.Hostname(), port)}
	if u.Scheme == "https" {
		d.tls = &tls.Config{ServerName: u.Hostname(), InsecureSkipVerify: cfg.Insecure, NextProtos: []string{"http/1.1"}}
	}
	var locals []net.Addr
	if ip := net.ParseIP(u.Hostname()); cfg.SourceIPs > 0 && (u.Hostname() == "localhost" || ip != nil && ip.IsLoopback() && ip.To4() != nil) {
		for i := 1; i <= cfg.SourceIPs; i++ {
			a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i))}
			locals = append(locals, a)
			d.source = append(d.source, a.IP.String())
		}
		if u.Hostname() == "localhost" {
			d.addr = net.JoinHostPort("127.0.0.1", port)
		}
	} else {
		locals = []net.Addr{nil}
	}
	for _, la := range locals {
		nd := &net.Dialer{Timeout: cfg.ConnTO, KeepAlive: 30 * time.Second}
		if la != nil {
			nd.LocalAddr = la
		}
		tr := &http.Transport{
			DialContext:         nd.DialContext,
			TLSClientConfig:     d.tls,
			DisableCompression:  true,
			MaxIdleConnsPerHost: -1,
			TLSHandshakeTimeout: cfg.ConnTO,
		}
		d.raw = append(d.raw, nd)
		d.trans = append(d.trans, tr)
		d.ws = append(d.ws, &http.Client{Transport: tr})
	}
	return d, nil
}

// pick returns the index of the dialer client i uses.
func (d *dialers) pick(i int) int { return i % len(d.raw) }

// close drops idle connections kept by the transports (a preflight
// request's, for instance), so nothing outlives the run.
func (d *dialers) close() {
	for _, t := range d.trans {
		t.CloseIdleConnections()
	}
}
