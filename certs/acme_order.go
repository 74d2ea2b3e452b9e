package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
)

// acmeOrder is one order attempt: its challenge responses, and what its CA transport saw.
type acmeOrder struct {
	domain string
	// replaces is the ARI certificate ID of the certificate this order renews (RFC 9773
	// §5), added to the new-order request by caTransport; "" for none. newOrderURL is the
	// CA's newOrder URL, where it goes.
	replaces    string
	newOrderURL string
	profile     string // the profile of the issued order, if the CA said

	// mu guards everything below. The transport writes problems, validated and
	// retryAfterDur; obtain writes the challenge responses, which handshakes and HTTP-01
	// requests read.
	mu            sync.Mutex
	problems      []caProblem
	validated     string // the challenge type of the authorization that became valid
	retryAfterDur time.Duration
	alpn          *tls.Certificate  // the TLS-ALPN-01 answer in progress, if any
	http01        map[string]string // HTTP-01 token → key authorization
}

// challengeTypes are the challenges edgeproxy answers, in order of preference.
func (a *acmeManager) challengeTypes() []string {
	if a.http01.Load() {
		return []string{"tls-alpn-01", "http-01"}
	}
	return []string{"tls-alpn-01"}
}

// client returns an ACME client for one order, whose requests go through caTransport.
func (a *acmeManager) client(ctx context.Context, o *acmeOrder) (*acme.Client, error) {
	key, err := a.account(ctx)
	if err != nil {
		return nil, err
	}
	return &acme.Client{
		Key:          key,
		DirectoryURL: a.opts.DirectoryURL,
		UserAgent:    "edgeproxy",
		HTTPClient:   &http.Client{Transport: &caTransport{base: a.base, o: o, ctx: ctx, log: a.log, key: key}, Timeout: time.Minute},
		RetryBackoff: o.retryBackoff,
	}, nil
}

// register makes sure the account exists at the CA, once per process.
func (a *acmeManager) register(ctx context.Context, c *acme.Client) error {
	a.accountMu.Lock()
	defer a.accountMu.Unlock()
	if a.registered {
		return nil
	}
	acct := &acme.Account{}
	if a.opts.Email != "" {
		acct.Contact = []string{"mailto:" + a.opts.Email}
	}
	if _, err := c.Register(ctx, acct, acme.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return fmt.Errorf("certs: registering the ACME account: %w", err)
	}
	a.registered = true
	return nil
}

// obtain runs one order for d with golang.org/x/crypto/acme and returns the certificate.
// It tries the challenge types in turn, each failure costing a new order (a failed
// authorization fails its order), as autocert does. replaces is the ARI ID of the
// certificate being renewed, or "".
func (a *acmeManager) obtain(ctx context.Context, d *acmeDomain, replaces string) (*tls.Certificate, *acmeOrder, error) {
	o := &acmeOrder{domain: d.name}
	ctx, cancel := context.WithTimeout(ctx, orderTimeout)
	defer cancel()
	if replaces != "" {
		if dir, err := a.directory(ctx); err == nil {
			o.replaces, o.newOrderURL = replaces, dir.NewOrder
		}
	}
	c, err := a.client(ctx, o)
	if err != nil {
		return nil, o, err
	}
	if err := a.register(ctx, c); err != nil {
		return nil, o, err
	}
	d.setOrder(o)
	defer d.setOrder(nil)

	ids := acme.DomainIDs(d.name)
	if d.ip {
		ids = acme.IPIDs(d.name)
	}
	var opts []acme.OrderOption
	if a.opts.Profile != "" {
		opts = append(opts, acme.WithOrderIssuanceProfile(acme.ProfileName(a.opts.Profile)))
	}
	types := a.challengeTypes()
	var order *acme.Order
	for order == nil {
		ord, err := c.AuthorizeOrder(ctx, ids, opts...)
		if o.replacing() && refusedByCA(err) {
			// The CA may refuse the replacement (already replaced, another CA's
			// certificate, or fail to find the certificate): order without it rather than
			// not at all.
			a.log.Warn(fmt.Sprintf("acme: the CA refused an order for %s that replaces %s (%v); ordering without \"replaces\"", d.name, replaces, err), "domain", d.name)
			o.setReplaces("")
			ord, err = c.AuthorizeOrder(ctx, ids, opts...)
		}
		if err != nil {
			return nil, o, err
		}
		failed, err := a.authorize(ctx, c, o, ord, types)
		if err != nil {
			if failed == "" || len(types) == 1 {
				return nil, o, err
			}
			types = slices.DeleteFunc(types, func(t string) bool { return t == failed })
			continue
		}
		if order, err = c.WaitOrder(ctx, ord.URI); err != nil {
			return nil, o, err
		}
	}
	o.profile = string(order.Profile)
	cert, err := a.finalize(ctx, c, d, order)
	return cert, o, err
}

// refusedByCA reports whether err is the CA's problem answer to a request, other than a
// rate limit (for which an order without "replaces" would fare worse). A 5xx counts: Pebble
// 2.8.0 answers 500 "could not find an order for the given certificate" for its own
// certificates whose serial begins with a set top bit (about 1 in 256; their ID carries
// the DER zero octet, which Pebble's lookup by hex does not expect; seen in CI), and a
// renewal that loses its "replaces" is still a renewal; ordering once more without it
// costs one request.
func refusedByCA(err error) bool {
	var ae *acme.Error
	return errors.As(err, &ae) && ae.StatusCode != http.StatusTooManyRequests
}

// authorize completes the pending authorizations of ord with the first of types each
// offers. On a failed challenge it returns its type with the error.
func (a *acmeManager) authorize(ctx context.Context, c *acme.Client, o *acmeOrder, ord *acme.Order, types []string) (failed string, err error) {
	for _, u := range ord.AuthzURLs {
		z, err := c.GetAuthorization(ctx, u)
		if err != nil {
			return "", err
		}
		if z.Status == acme.StatusValid {
			continue
		}
		if z.Status != acme.StatusPending {
			return "", fmt.Errorf("certs: authorization for %s is %s", z.Identifier.Value, z.Status)
		}
		var chal *acme.Challenge
		for _, t := range types {
			for _, ch := range z.Challenges {
				if ch.Type == t && chal == nil {
					chal = ch
				}
			}
		}
		if chal == nil {
			var offered []string
			for _, ch := range z.Challenges {
				offered = append(offered, ch.Type)
			}
			return "", fmt.Errorf("certs: no viable challenge type for %s: the CA offers %s; edgeproxy answers %s (HTTP-01 needs listen.http)",
				z.Identifier.Value, strings.Join(offered, ", "), strings.Join(types, ", "))
		}
		if err := o.prepare(c, chal, z.Identifier.Value); err != nil {
			return "", err
		}
		shared := a.shareAnswer(ctx, o, chal)
		if _, err := c.Accept(ctx, chal); err != nil {
			o.clearAnswers()
			a.unshareAnswer(ctx, shared)
			return chal.Type, err
		}
		_, err = c.WaitAuthorization(ctx, z.URI)
		o.clearAnswers()
		a.unshareAnswer(ctx, shared)
		if err != nil {
			return chal.Type, err
		}
	}
	return "", nil
}

// finalize sends the CSR of a new key for d and returns the issued certificate.
func (a *acmeManager) finalize(ctx context.Context, c *acme.Client, d *acmeDomain, order *acme.Order) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{}
	if d.ip {
		tmpl.IPAddresses = []net.IP{net.ParseIP(d.name)}
	} else {
		tmpl.Subject = pkix.Name{CommonName: d.name}
		tmpl.DNSNames = []string{d.name}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, err
	}
	der, _, err := c.CreateCertFromOrder(ctx, order, csr, true)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der[0])
	if err != nil {
		return nil, fmt.Errorf("certs: the CA's certificate: %w", err)
	}
	return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}, nil
}

// prepare sets up the answer to chal for identifier, before it is accepted.
func (o *acmeOrder) prepare(c *acme.Client, chal *acme.Challenge, identifier string) error {
	switch chal.Type {
	case "tls-alpn-01":
		cert, err := c.TLSALPN01ChallengeCert(chal.Token, identifier)
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.alpn = &cert
		o.mu.Unlock()
	case "http-01":
		answer, err := c.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.http01 = map[string]string{chal.Token: answer}
		o.mu.Unlock()
	default:
		return fmt.Errorf("certs: cannot answer %s challenges", chal.Type)
	}
	return nil
}

func (o *acmeOrder) clearAnswers() {
	o.mu.Lock()
	o.alpn, o.http01 = nil, nil
	o.mu.Unlock()
}

// alpnCert is the TLS-ALPN-01 answer in progress, or nil.
func (o *acmeOrder) alpnCert() *tls.Certificate {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.alpn
}

// httpAnswer is the HTTP-01 answer for token, or "".
func (o *acmeOrder) httpAnswer(token string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.http01[token]
}

func (o *acmeOrder) replacing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.replaces != ""
}

func (o *acmeOrder) setReplaces(id string) {
	o.mu.Lock()
	o.replaces = id
	o.mu.Unlock()
}

// replacesFor returns the ID to add to a request for url: o.replaces for the newOrder URL.
func (o *acmeOrder) replacesFor(method, url string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if method != http.MethodPost || o.newOrderURL == "" || url != o.newOrderURL {
		return ""
	}
	return o.replaces
}
