package certs

import (
	"crypto/x509"
	"time"
)

// CertificateStatus describes one certificate of a Source, for the admin listener's
// /certificates: what it covers, until when, and for an ACME one when it will be renewed
// and why then.
type CertificateStatus struct {
	// Name is the ACME domain or IP address; for other certificates, their first name.
	Name string `json:"name"`
	// Source is "acme", "static" or "self-signed".
	Source string `json:"source"`
	// Names are the DNS names and IP addresses the certificate covers; empty for an
	// ACME name without a certificate yet.
	Names     []string  `json:"names,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// Profile is the ACME profile it was issued under, when known (not for one read from
	// the cache).
	Profile string `json:"profile,omitempty"`
	// NextRenewal is when edgeproxy renews it (ACME only), and RenewalBasis why then:
	// "ari" (a time picked in the CA's suggested window), or "lifetime" (RenewBefore or a
	// third of the lifetime before expiry: the CA has no renewal information, or it could
	// not be fetched yet).
	NextRenewal  time.Time `json:"next_renewal,omitzero"`
	RenewalBasis string    `json:"renewal_basis,omitempty"`
	// ARI is the CA's renewal information (ACME only); nil when the CA offers none.
	ARI *ARIStatus `json:"ari,omitempty"`
}

// ARIStatus is what edgeproxy knows of a certificate's renewal information (RFC 9773).
type ARIStatus struct {
	// WindowStart and WindowEnd are the CA's suggested renewal window, zero until the
	// first successful check.
	WindowStart    time.Time `json:"window_start,omitzero"`
	WindowEnd      time.Time `json:"window_end,omitzero"`
	ExplanationURL string    `json:"explanation_url,omitempty"`
	// Checked is the last successful check, NextCheck the next check.
	Checked   time.Time `json:"checked,omitzero"`
	NextCheck time.Time `json:"next_check,omitzero"`
	// Error is why the last check failed, if it did.
	Error string `json:"error,omitempty"`
}

// Certificates lists the ACME names (in configuration order, with or without a
// certificate yet), then the static and self-signed certificates.
func (s *Source) Certificates() []CertificateStatus {
	out := []CertificateStatus{} // [], not null, when there are none
	if a := s.acme; a != nil {
		for _, name := range a.names {
			out = append(out, a.domains[name].status())
		}
	}
	for i := range s.opts.Static {
		out = append(out, leafStatus("static", s.opts.Static[i].Leaf))
	}
	if s.selfSigned != nil {
		out = append(out, leafStatus("self-signed", s.selfSigned))
	}
	return out
}

func (d *acmeDomain) status() CertificateStatus {
	cur := d.current.Load()
	if cur == nil {
		return CertificateStatus{Name: d.name, Source: "acme"}
	}
	st := leafStatus("acme", cur.cert.Leaf)
	st.Name, st.Profile, st.NextRenewal = d.name, cur.profile, cur.renewAt
	st.RenewalBasis = "lifetime"
	if cur.ari.info != nil {
		st.RenewalBasis = "ari"
	}
	if s := cur.ari; s.info != nil || !s.nextCheck.IsZero() {
		st.ARI = &ARIStatus{Checked: s.checked, NextCheck: s.nextCheck, Error: s.err}
		if s.info != nil {
			st.ARI.WindowStart, st.ARI.WindowEnd = s.info.SuggestedWindow.Start, s.info.SuggestedWindow.End
			st.ARI.ExplanationURL = s.info.ExplanationURL
		}
	}
	return st
}

func leafStatus(source string, leaf *x509.Certificate) CertificateStatus {
	st := CertificateStatus{Source: source}
	if leaf == nil {
		return st
	}
	st.Names = append(st.Names, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		st.Names = append(st.Names, ip.String())
	}
	if len(st.Names) > 0 {
		st.Name = st.Names[0]
	}
	st.Serial = serialHex(leaf)
	st.NotBefore, st.NotAfter = leaf.NotBefore, leaf.NotAfter
	return st
}
