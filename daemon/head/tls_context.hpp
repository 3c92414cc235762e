// The front-end's TLS settings: a server context made from frontend.tls_certificate (a PEM
// chain) and frontend.tls_key. Each connection keeps the context it started with, so a
// reload (SIGHUP) that loads a new certificate affects new connections only.
#pragma once

#include "core/error.hpp"

#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <string>

namespace dpengine {

Result<std::shared_ptr<boost::asio::ssl::context>> load_tls_context(const std::string& certificate_path,
                                                                    const std::string& key_path);

}  // namespace dpengine
