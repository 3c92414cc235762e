#include "head/tls_context.hpp"

#include "core/private_file.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace dpengine {

namespace ssl = boost::asio::ssl;

namespace {

// OpenSSL's own words for the last failure, which say what is wrong with a file.
std::string openssl_reason(const boost::system::error_code& ec) {
    std::string text = ec.message();
    if (unsigned long e = ERR_peek_last_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        text = buf;
    }
    ERR_clear_error();
    return text;
}

}  // namespace

Result<std::shared_ptr<ssl::context>> load_tls_context(const std::string& certificate_path,
                                                       const std::string& key_path) {
    // The key is read here, after the same check as at start, rather than by OpenSSL from its path.
    auto key = read_private_file(key_path, "frontend.tls_key");
    if (!key) return key.error();
    auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
    boost::system::error_code ec;
    // TLS 1.2 and later; no compression, no renegotiation by clients.
    context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                             ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::no_compression |
                             SSL_OP_NO_RENEGOTIATION,
                         ec);
    // The key first: a certificate that does not match it is then found by the check below,
    // which says so in words.
    if (!ec) context->use_private_key(boost::asio::buffer(*key), ssl::context::pem, ec);
    OPENSSL_cleanse(key->data(), key->size());
    if (ec) {
        return Error{"cannot load frontend.tls_key " + key_path + ": " + openssl_reason(ec) +
                     "; give the certificate's private key in PEM form, unencrypted"};
    }
    context->use_certificate_chain_file(certificate_path, ec);
    if (ec) {
        return Error{"cannot load frontend.tls_certificate " + certificate_path + ": " + openssl_reason(ec) +
                     "; give the server's certificate (then any intermediates) in PEM form"};
    }
    if (SSL_CTX_check_private_key(context->native_handle()) != 1) {
        ERR_clear_error();
        return Error{"frontend.tls_key " + key_path + " is not the private key of frontend.tls_certificate " +
                     certificate_path + "; give the key the certificate was made for"};
    }
    return context;
}

}  // namespace dpengine
